import os
import stat

import pytest

from common.errors import PropertiesError
from common.properties import AgentProperties, KeptProperties, atomic_write, update_properties

ORIGINAL = (
    "# agent.properties of hv-17\n"
    "\n"
    "! written by the installer\n"
    "guid = 9f0c-17\n"
    "zone:1\n"
    "host=10.0.0.1,10.0.0.2@static\n"
    "workers   4\n"
    "resource=com.example.Hypervisor\\\n"
    "    Resource\n"
    "caf\\u00e9=cr\\u00e8me\n"
    "# trailing comment\n"
    "cluster=7"
)


@pytest.fixture
def props_file(tmp_path):
    path = tmp_path / "agent.properties"
    path.write_bytes(ORIGINAL.encode("latin-1"))
    return path


def test_round_trip_changes_only_the_host_line(props_file):
    update_properties(props_file, {"host": "10.0.0.2,10.0.0.1@roundrobin"})
    after = props_file.read_bytes().decode("latin-1").split("\n")
    before = ORIGINAL.split("\n")
    assert len(after) == len(before)
    changed = [(b, a) for b, a in zip(before, after, strict=True) if a != b]
    assert changed == [("host=10.0.0.1,10.0.0.2@static", "host=10.0.0.2,10.0.0.1@roundrobin")]


def test_unchanged_document_is_byte_for_byte_identical(props_file):
    AgentProperties.load(props_file).save()
    assert props_file.read_bytes() == ORIGINAL.encode("latin-1")


def test_values_read_like_java(props_file):
    props = AgentProperties.load(props_file)
    assert props.get("guid") == "9f0c-17"
    assert props.get("zone") == "1"
    assert props.get("workers") == "4"
    assert props.get("resource") == "com.example.HypervisorResource"
    assert props.get("café") == "crème"
    assert props.get("missing", "d") == "d"


def test_new_keys_are_appended_and_ipv6_colons_escaped_as_java_does(props_file):
    update_properties(props_file, {"host": "[::1]:8250@static", "port": "8250"})
    text = props_file.read_text("latin-1")
    assert "host=[\\:\\:1]\\:8250@static\n" in text
    assert text.endswith("cluster=7\nport=8250\n")
    assert AgentProperties.load(props_file).get("host") == "[::1]:8250@static"


def test_none_removes_a_key(props_file):
    update_properties(props_file, {"workers": None})
    assert "workers" not in AgentProperties.load(props_file).as_dict()


def test_atomic_write_keeps_mode_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "f.properties"
    path.write_text("a=1\n")
    os.chmod(path, 0o600)
    atomic_write(path, b"a=2\n")
    assert path.read_text() == "a=2\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["f.properties"]


def test_atomic_write_with_a_mode_sets_it_before_any_data_is_written(tmp_path, monkeypatch):
    real_fdopen = os.fdopen
    modes_at_write = []

    class Spy:
        def __init__(self, file):
            self.file = file

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.file.__exit__(*exc)

        def write(self, data):
            modes_at_write.append(stat.S_IMODE(os.fstat(self.file.fileno()).st_mode))
            return self.file.write(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: Spy(real_fdopen(fd, *a, **k)))
    path = tmp_path / "agent.key"
    atomic_write(path, b"secret", mode=0o640)  # not mkstemp's own 0600: the chmod came first
    assert modes_at_write == [0o640]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    atomic_write(path, b"secret", mode=0o600)  # an explicit mode wins over the existing one
    assert modes_at_write == [0o640, 0o600]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_atomic_write_without_a_mode_keeps_the_existing_one_or_makes_0644(tmp_path):
    path = tmp_path / "f.properties"
    atomic_write(path, b"a=1\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    os.chmod(path, 0o640)
    atomic_write(path, b"a=2\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.properties"
    path.write_text("a=1\n")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        atomic_write(path, b"a=2\n")
    assert path.read_text() == "a=1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["f.properties"]


def test_unreadable_or_broken_files_raise_one_line_errors(tmp_path):
    with pytest.raises(PropertiesError, match="cannot read"):
        AgentProperties.load(tmp_path / "nope.properties")
    bad = tmp_path / "bad.properties"
    bad.write_text("key=\\u12G4\n")
    with pytest.raises(PropertiesError, match=r"bad\.properties"):
        AgentProperties.load(bad)


def test_kept_properties_writes_like_update_properties(props_file):
    os.chmod(props_file, 0o640)
    kept = KeptProperties(props_file)
    kept.update({"host": "10.0.0.2,10.0.0.1@roundrobin"})
    kept.update({"host": "10.0.0.1,10.0.0.2@roundrobin"})
    expected = ORIGINAL.replace(
        "host=10.0.0.1,10.0.0.2@static", "host=10.0.0.1,10.0.0.2@roundrobin"
    )
    assert props_file.read_bytes() == expected.encode("latin-1")
    assert stat.S_IMODE(props_file.stat().st_mode) == 0o640
    assert [p.name for p in props_file.parent.iterdir()] == ["agent.properties"]


def test_kept_properties_parses_only_what_it_did_not_write(props_file, monkeypatch):
    loads = []
    real_load = AgentProperties.load.__func__

    def counting_load(cls, path):
        loads.append(path)
        return real_load(cls, path)

    monkeypatch.setattr(AgentProperties, "load", classmethod(counting_load))
    kept = KeptProperties(props_file)
    for n in range(3):
        kept.update({"host": f"10.0.0.{n}@static"})
    assert len(loads) == 1


@pytest.mark.parametrize("how", ["replaced", "edited in place"])
def test_kept_properties_reads_again_a_file_another_writer_changed(props_file, how):
    kept = KeptProperties(props_file)
    kept.update({"host": "10.0.0.2@static"})
    if how == "replaced":  # another writer of the agent (the token's removal), atomically
        update_properties(props_file, {"workers": None})
    else:  # an operator's editor, same inode
        text = props_file.read_text("latin-1").replace("workers   4", "workers   8")
        with open(props_file, "r+", encoding="latin-1") as file:
            file.write(text)
    kept.update({"host": "10.0.0.3@static"})
    props = AgentProperties.load(props_file)
    assert props.get("host") == "10.0.0.3@static"
    assert props.get("workers") == (None if how == "replaced" else "8")


def test_kept_properties_after_a_failed_write_keeps_the_old_file_and_reads_again(
    props_file, monkeypatch
):
    kept = KeptProperties(props_file)
    kept.update({"host": "10.0.0.2@static"})
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(OSError(28, "full")))
    with pytest.raises(OSError, match="full"):
        kept.update({"host": "10.0.0.3@static"})
    assert AgentProperties.load(props_file).get("host") == "10.0.0.2@static"
    monkeypatch.setattr(os, "replace", real_replace)
    kept.update({"workers": None})
    props = AgentProperties.load(props_file)
    assert (props.get("host"), props.get("workers")) == ("10.0.0.2@static", None)  # read again
    with pytest.raises(PropertiesError, match="cannot read"):
        KeptProperties(props_file.parent / "gone.properties").update({"host": "x"})
