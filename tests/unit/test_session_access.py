"""Who may read a session: the directory is 0750 (with record.group: that group, setgid) before
anything is written in it, whatever the umask of the process that uses SessionWriter."""
from __future__ import annotations

import grp
import os
import stat

from shm_vla.workers.session_files import SessionWriter


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_session_directory_is_0750_even_under_a_permissive_umask(tmp_path):
    old = os.umask(0o002)
    try:
        writer = SessionWriter(tmp_path, stamp="a")
    finally:
        os.umask(old)
    writer.close()
    assert _mode(writer.path) == 0o750


def test_session_directory_belongs_to_the_group_and_passes_it_on(tmp_path):
    group = grp.getgrgid(os.getegid()).gr_name      # a group this process may always use
    writer = SessionWriter(tmp_path, stamp="b", group=group, save_data=True, views=("View1",))
    writer.close()
    assert _mode(writer.path) == 0o2750
    assert all(p.stat().st_gid == os.getegid() for p in [writer.path, *writer.path.rglob("*")])
