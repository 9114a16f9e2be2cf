"""A Kubernetes Secret mounted with fsGroup is 0440 root:<fsGroup>: accepted only in exactly that shape."""

from __future__ import annotations

import os
import stat

import pytest

from gxsubmit.wallet import _is_projected_secret

_POD_UID, _FS_GROUP = 10001, 10001


def _st(mode: int, uid: int = 0, gid: int = _FS_GROUP) -> os.stat_result:
    return os.stat_result((stat.S_IFREG | mode, 1, 1, 1, uid, gid, 100, 0, 0, 0))


def test_fsgroup_0440_root_owned_is_accepted_for_the_pod_user() -> None:
    assert _is_projected_secret(_st(0o440), euid=_POD_UID, groups={_FS_GROUP})


@pytest.mark.parametrize("mode", [0o444, 0o460, 0o640, 0o442, 0o450])
def test_other_modes_are_rejected(mode: int) -> None:
    assert not _is_projected_secret(_st(mode), euid=_POD_UID, groups={_FS_GROUP})


def test_group_we_are_not_in_is_rejected() -> None:
    assert not _is_projected_secret(_st(0o440), euid=_POD_UID, groups={_FS_GROUP + 1})


def test_file_owned_by_someone_other_than_root_is_rejected() -> None:
    assert not _is_projected_secret(_st(0o440, uid=1234), euid=_POD_UID, groups={_FS_GROUP})


def test_root_gets_no_exception() -> None:
    """Running as root, we could have chmod-ed the file ourselves: keep the strict rule."""
    assert not _is_projected_secret(_st(0o440), euid=0, groups={_FS_GROUP})
