"""The files in a model folder that its manifest does not list (a verify's ``extra_files``).

Found by listing the folder and each real folder below it (:func:`~modelguard.fs.walk_files`:
links to folders are not entered; tool folders, lock files and partial downloads are skipped),
in the verify's own thread while the readers read, starting from the listing the engine took
of the model folder when it met the first small file, if it took one (before the small files'
reads: a file made later in the verify is not seen, as one made just after it would not be).

With the cache's folder index (:class:`~modelguard.statindex.FolderView`), what a search
found is kept as the index's listing record, under the set of paths the manifest lists and
the stat key (device, inode, modification and change times) of every folder it listed, each
taken before the folder was listed: creating, removing or renaming anything in a folder
changes its times. A later verify of the same manifest answers from the record when each
folder still has its key (one stat per folder, none per file), each link the search met
still leads to a folder or not as it did (a link to a folder is neither entered nor reported,
and its target can change with no folder of the model changing: one stat per link), the
record has not expired and the verify believes the index (not ``rehash``); otherwise it
lists the folders again. As with a file's record, no folder modified within the cache's racy
window before the verify began is recorded (a change later in the same timestamp tick would
leave its key unchanged), and no folder on a file system that may keep a folder's times when
its entries change (a network or FUSE file system: only local disk and memory file systems
are trusted, :data:`~modelguard.fs.FOLDER_TIMES_KEPT`). An index keeps the records of the
last four manifests (sets of listed paths) verified against the folder.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from .fs import FOLDER_TIMES_KEPT, file_system_type, walk_files
from .readplan import per_manifest
from .statindex import FolderView

_FORMAT = "listing-1"  # changes with the rules of the search (skipped names, links)
_KEPT_BY_DEVICE: dict[int, bool] = {}  # device -> whether its file system keeps folder times (_times_kept)


def unlisted_files(checker: Any, root: str | os.PathLike[str], known: frozenset[str]) -> tuple[str, ...]:
    """The relative paths of the files under ``root`` (sorted) that are not in ``known``."""
    view = checker.cache
    key = folders = links = None
    if type(view) is FolderView:
        manifest = checker.manifest
        held = per_manifest(manifest, (id(manifest), "listing key", id(known)), lambda: (known, _key(known)))
        key = held[1] if held[0] is known else _key(known)  # the value holds known: no other set has its id
        if view.believed:
            found = _recorded(view, key, os.fspath(root))
            if found is not None:
                return found
        folders, links = [], []
    found = tuple(rel for rel in walk_files(root, known=known, top=checker.listing, top_stat=checker.listing_stat,
                                            folders=folders, links=links) if rel not in known)
    if folders is not None and _times_kept(os.fspath(root), folders):
        view.remember_listing(key, found, folders, links)
    return found


def _times_kept(base: str, folders: list[tuple[str, Any]]) -> bool:
    """Whether each of ``folders`` (as :func:`~modelguard.fs.walk_files` gives them) is on a
    file system that changes a folder's times whenever an entry is made, removed or renamed in
    it (:data:`~modelguard.fs.FOLDER_TIMES_KEPT`; told once per device)."""
    for prefix, st in folders:
        if st is None:
            return False
        kept = _KEPT_BY_DEVICE.get(st.st_dev)
        if kept is None:
            if len(_KEPT_BY_DEVICE) >= 64:
                _KEPT_BY_DEVICE.clear()
            kept = _KEPT_BY_DEVICE[st.st_dev] = (
                file_system_type(base + os.sep + prefix[:-1].replace("/", os.sep) if prefix else base)
                in FOLDER_TIMES_KEPT)
        if not kept:
            return False
    return True


def _key(known: frozenset[str]) -> str:
    import hashlib

    return hashlib.sha256("\0".join([_FORMAT, *sorted(known)]).encode("utf-8", "surrogateescape")).hexdigest()


def _recorded(view: FolderView, key: str, base: str) -> tuple[str, ...] | None:
    """The index's listing record's files, when it was made for ``key``, has not expired,
    every folder it lists still has its stat key and every link it met still leads to a folder
    or not as it did; else None."""
    try:
        recorded_key, stored, extra, folders, links = view.listings[key]
        if (recorded_key != key or type(stored) is not int or not view.oldest_ns <= stored <= view.newest_ns
                or type(folders) is not list or not folders or folders[0][0] != "" or type(extra) is not list
                or type(links) is not list):
            return None
        for prefix, dev, ino, mtime, ctime in folders:
            st = os.lstat(base + os.sep + prefix[:-1].replace("/", os.sep)) if prefix else os.stat(base)
            if (not stat.S_ISDIR(st.st_mode)
                    or (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns) != (dev, ino, mtime, ctime)):
                return None
        for rel, to_folder in links:  # a link to a folder is neither entered nor reported: its target decides
            if os.path.isdir(base + os.sep + rel.replace("/", os.sep)) is not to_folder:
                return None
        found = tuple(extra)
        return found if all(type(rel) is str for rel in found) else None
    except Exception:  # a malformed record (any shape a damaged index holds): the folders are listed again
        return None
