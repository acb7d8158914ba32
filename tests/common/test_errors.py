"""One exception tree: every exception class the project defines derives from LbError, and the
command lines share one exit-2 and one exit-1 class."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import click
import pytest
from click.testing import CliRunner

from common.errors import Failed, LbError, Rejected

PACKAGES = ("common", "msrv", "agentd", "msctl")


def modules() -> list[ModuleType]:
    found = []
    for name in PACKAGES:
        package = importlib.import_module(name)
        found.append(package)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{name}."):
            if not info.name.endswith(".__main__"):  # importing one runs its command
                found.append(importlib.import_module(info.name))
    return found


def defined_exceptions() -> list[type[BaseException]]:
    """Every exception class defined in the packages (nested in a class too): the subclasses
    of BaseException, once every module is imported, whose module is one of theirs."""
    imported = {m.__name__ for m in modules()}
    found, seen = [], set()
    pending: list[type[BaseException]] = [BaseException]
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.add(sub)
                pending.append(sub)
                if sub.__module__ in imported:
                    found.append(sub)
    return found


def test_the_walk_finds_the_packages_exceptions() -> None:
    names = {f"{c.__module__}.{c.__qualname__}" for c in defined_exceptions()}
    assert {
        "common.errors.LbError",
        "common.errors.Rejected",
        "common.records.HostBusyError",
        "msctl.children.ChildError",
        "msctl.lab_demo.DemoFailedError",
        "agentd.failover.EveryServerRefusedError",
    } <= names
    assert len({m.__name__.split(".")[0] for m in modules()}) == len(PACKAGES)


def test_every_exception_the_project_defines_derives_from_lb_error() -> None:
    strays = sorted(
        f"{c.__module__}.{c.__qualname__}{tuple(b.__name__ for b in c.__bases__)}"
        for c in defined_exceptions()
        if not issubclass(c, LbError)
    )
    assert strays == []


@pytest.mark.parametrize(("error", "code"), [(Rejected, 2), (Failed, 1)])
def test_the_cli_errors_exit_with_the_design_codes(error: type[LbError], code: int) -> None:
    @click.command()
    def command() -> None:
        raise error("the reason")

    result = CliRunner().invoke(command)
    assert (result.exit_code, result.output) == (code, "Error: the reason\n")


def test_both_command_lines_use_the_one_rejected_and_failed() -> None:
    import agentd.cli
    import msctl.lab_cmd
    import msctl.options

    assert agentd.cli.Rejected is Rejected
    assert msctl.options.Rejected is Rejected and msctl.options.Failed is Failed
    assert msctl.lab_cmd.Rejected is Rejected and msctl.lab_cmd.Failed is Failed
