"""Output paths: an output that is one of the inputs under another name is refused, and the temporary
files killed writers left are told apart from those of live writers, other containers and other names."""
from __future__ import annotations

import os
import re
import socket

import pytest

from conftest import a_dead_pid
from hybridnde.io import DataError
from hybridnde.output_paths import _host_tag, check_output_path, remove_orphans


def test_an_output_that_is_an_input_under_another_name_is_refused(tmp_path):
    """A hard link (or a bind mount) is the input under another path: writing it replaces the input."""
    truth = tmp_path / "truth.nc"
    truth.write_bytes(b"the input")
    os.link(truth, tmp_path / "linked.nc")
    (tmp_path / "symlinked.nc").symlink_to(truth)
    for out in ("linked.nc", "symlinked.nc", "truth.nc"):
        with pytest.raises(DataError, match=rf"--out .*{out}: is the input file rollout.initial_conditions, which "
                                            "the output would replace; give another name"):
            check_output_path(tmp_path / out, inputs={"rollout.initial_conditions": truth, "--closure": None})
    (tmp_path / "copy.nc").write_bytes(b"the input")
    assert check_output_path(tmp_path / "copy.nc", inputs={"rollout.initial_conditions": truth}) == \
        tmp_path / "copy.nc"


@pytest.mark.skipif(not os.path.exists("/proc/self/ns/pid"), reason="no PID namespaces here")
def test_the_host_tag_names_this_pid_namespace():
    """Containers sharing a host name have their own PIDs: the tag carries the namespace's number, as
    the kernel names it (``pid:[4026531836]``)."""
    namespace = re.fullmatch(r"pid:\[(\d+)\]", os.readlink("/proc/self/ns/pid")).group(1)
    assert _host_tag() == f"{socket.gethostname()}-{namespace}"


def test_a_live_writer_of_another_user_keeps_its_temporary_file(tmp_path, monkeypatch):
    """``kill(pid, 0)`` on another user's live process is refused (EPERM), not answered "no such process"."""
    theirs, dead = 4_000_000, a_dead_pid()
    real_kill = os.kill

    def kill(pid, signal_number):
        if pid == theirs:
            raise PermissionError(1, "Operation not permitted")
        return real_kill(pid, signal_number)

    monkeypatch.setattr(os, "kill", kill)
    alive = tmp_path / f".out.nc.{_host_tag()}.{theirs}.x1y2.part"
    orphan = tmp_path / f".out.nc.{_host_tag()}.{dead}.x3y4.part"
    for path in (alive, orphan):
        path.write_bytes(b"partial")
    remove_orphans(tmp_path / "out.nc")
    assert alive.exists() and not orphan.exists()


def test_orphans_of_names_with_glob_characters_are_found_and_only_theirs(tmp_path):
    """``run[1].nc`` as a glob pattern matches ``run1.nc``: its orphans were left, another's taken."""
    dead = a_dead_pid()
    orphan = tmp_path / f".run[1].nc.{_host_tag()}.{dead}.x1y2.part"
    anothers = tmp_path / f".run1.nc.{_host_tag()}.{dead}.x3y4.part"
    for path in (orphan, anothers):
        path.write_bytes(b"partial")
    remove_orphans(tmp_path / "run[1].nc")
    assert not orphan.exists() and anothers.exists()
