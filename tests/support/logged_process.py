"""Tests drive the same child-process class as the lab."""

from msctl.children import ChildError, LoggedProcess

__all__ = ["ChildError", "LoggedProcess"]
