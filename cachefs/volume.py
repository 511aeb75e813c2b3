"""An unlocked gocryptfs volume as an immutable plaintext tree over a ciphertext source.

Building the tree is pure (:func:`build_tree`: source listing + small metadata files in,
nodes out) so it is tested without FUSE; :func:`open_volume` is the thin async shell that fetches
``gocryptfs.conf``, every ``gocryptfs.diriv`` and long-name ``.name`` file, and unlocks the key.
The tree is built once at mount time: model volumes are immutable while served, and a fixed
tree gives stable inode numbers and lets the kernel cache entries and attributes for long.
"""

from __future__ import annotations

import asyncio
import hashlib
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from agents.logsetup import get_logger
from cachefs.errors import CachefsError, VolumeFormatError
from cachefs.gocryptfs import content, names
from cachefs.gocryptfs.config import CONF_NAME, VolumeConfig, parse_config, password_from_secret, unlock
from cachefs.gocryptfs.content import ContentCipher
from cachefs.gocryptfs.keys import VolumeKeys, derive_keys
from cachefs.gocryptfs.names import DIRIV_NAME, NameCodec
from cachefs.gocryptfs.symlink import decrypt_target
from cachefs.manifest import MANIFEST_NAME
from cachefs.sources.base import CiphertextSource, SourceEntry

log = get_logger("cachefs.volume")

ROOT_INODE = 1
_INODE_MASK = (1 << 63) - 1
METADATA_CONCURRENCY = 16


@dataclass
class Node:
    """One plaintext file, directory or symlink."""

    inode: int
    parent: int
    name: bytes
    kind: Literal["file", "dir", "symlink"]
    cipher_path: str  # "" for the root
    cipher_size: int = 0
    size: int = 0  # plaintext size (symlinks: target length)
    etag: str | None = None
    target: bytes | None = None
    children: dict[bytes, int] = field(default_factory=dict)
    problem: str | None = None  # set when the file cannot be served (open → EIO)


@dataclass
class VolumeTree:
    """All nodes by inode, plus what was skipped while building (for one warning each)."""

    nodes: dict[int, Node]
    skipped: list[str] = field(default_factory=list)

    @property
    def root(self) -> Node:
        return self.nodes[ROOT_INODE]


def stable_inode(cipher_path: str, taken: Mapping[int, object]) -> int:
    """Inode number derived from the ciphertext path: the same across remounts and restarts."""
    digest = hashlib.sha256(cipher_path.encode("utf-8", "surrogateescape")).digest()
    ino = int.from_bytes(digest[:8], "big") & _INODE_MASK
    while ino <= ROOT_INODE or ino in taken:  # collisions are astronomically rare; probe deterministically
        ino = (ino + 1) & _INODE_MASK
    return ino


def longname_companions(entries: list[SourceEntry]) -> list[str]:
    """Paths of the ``.name`` files the tree needs."""
    return [e.path for e in entries if e.kind == "file" and names.is_longname_file(posixpath.basename(e.path))]


def diriv_paths(entries: list[SourceEntry]) -> list[str]:
    """Paths of every ``gocryptfs.diriv`` (root first)."""
    dirs = [""] + [e.path for e in entries if e.kind == "dir"]
    return [posixpath.join(d, DIRIV_NAME) if d else DIRIV_NAME for d in dirs]


def build_tree(entries: list[SourceEntry], config: VolumeConfig, keys: VolumeKeys, dirivs: Mapping[str, bytes],
               longnames: Mapping[str, bytes]) -> VolumeTree:
    """Decrypt names and sizes of every entry; undecryptable entries are skipped (as gocryptfs does)."""
    codec = NameCodec(config, keys.names)
    cipher = ContentCipher(keys.content)
    use_diriv = config.dir_iv and not config.plaintext_names
    root = Node(ROOT_INODE, ROOT_INODE, b"", "dir", "")
    tree = VolumeTree({ROOT_INODE: root})
    by_dir: dict[str, Node] = {"": root}
    ivs: dict[str, bytes] = {}
    # Parents before children: sort by depth.
    for entry in sorted(entries, key=lambda e: (e.path.count("/"), e.path)):
        parent_path, stored = posixpath.split(entry.path)
        parent = by_dir.get(parent_path)
        if parent is None:
            continue  # inside a skipped directory
        if names.is_internal(stored, in_root=parent_path == "") or (parent_path == "" and stored == MANIFEST_NAME):
            continue
        try:
            iv = ivs.get(parent_path)
            if iv is None:
                iv = names.ZERO_IV
                if use_diriv:
                    iv_path = posixpath.join(parent_path, DIRIV_NAME) if parent_path else DIRIV_NAME
                    data = dirivs.get(iv_path)
                    if data is None:
                        raise VolumeFormatError(f"{iv_path} is missing", hint="the cipher directory is incomplete")
                    iv = names.parse_diriv(data, iv_path)
                ivs[parent_path] = iv
            encoded = stored
            if not config.plaintext_names and config.long_names and names.is_longname(stored):
                companion = longnames.get(entry.path + names.LONGNAME_SUFFIX)
                if companion is None:
                    raise ValueError("long-name .name file is missing")
                encoded = names.parse_longname_file(stored, companion)
            plain = codec.decrypt(encoded, iv)
        except (ValueError, VolumeFormatError) as exc:
            tree.skipped.append(f"{entry.path}: {exc}")
            continue
        if plain in parent.children:
            tree.skipped.append(f"{entry.path}: duplicate plaintext name")
            continue
        node = Node(stable_inode(entry.path, tree.nodes), parent.inode, plain, entry.kind, entry.path,
                    cipher_size=entry.size, etag=entry.etag)
        if entry.kind == "file":
            try:
                node.size = content.plain_size(entry.size, entry.path)
            except VolumeFormatError as exc:
                node.problem = str(exc)
        elif entry.kind == "symlink":
            try:
                node.target = decrypt_target(cipher, entry.target or "", entry.path)
            except CachefsError as exc:  # bad link: skip it, as gocryptfs hides it
                tree.skipped.append(f"{entry.path}: {exc}")
                continue
            node.size = len(node.target)
        else:
            by_dir[entry.path] = node
        parent.children[plain] = node.inode
        tree.nodes[node.inode] = node
    return tree


@dataclass
class GocryptfsVolume:
    """An unlocked volume: its config, keys (never logged), tree and source."""

    source: CiphertextSource
    config: VolumeConfig
    keys: VolumeKeys
    tree: VolumeTree
    entries: list[SourceEntry]

    @property
    def cipher(self) -> ContentCipher:
        return ContentCipher(self.keys.content)


async def _read_many(source: CiphertextSource, paths: list[str], present: set[str]) -> dict[str, bytes]:
    limit = asyncio.Semaphore(METADATA_CONCURRENCY)
    out: dict[str, bytes] = {}

    async def one(path: str) -> None:
        if path not in present:
            return
        async with limit:
            out[path] = await source.read_all(path)

    await asyncio.gather(*(one(p) for p in paths))
    return out


async def open_volume(source: CiphertextSource, secret: bytes, *, where: str = "the key file") -> GocryptfsVolume:
    """List the source, unlock the key (scrypt in a thread) and build the plaintext tree."""
    entries = await source.list_tree()
    files = {e.path for e in entries if e.kind == "file"}
    if CONF_NAME not in files:
        raise VolumeFormatError(f"{CONF_NAME} not found in {source.name}",
                                hint="point cachefs at the root of a gocryptfs cipher directory")
    config = parse_config(await source.read_all(CONF_NAME), f"{source.name}/{CONF_NAME}")
    password = password_from_secret(secret, where)
    master = await asyncio.to_thread(unlock, config, password)
    keys = derive_keys(master)
    del master
    dirivs = await _read_many(source, diriv_paths(entries), files) if config.dir_iv else {}
    longnames = await _read_many(source, longname_companions(entries), files)
    tree = build_tree(entries, config, keys, dirivs, longnames)
    for reason in tree.skipped[:20]:
        log.warning("cachefs.entry_skipped", detail=reason)
    if len(tree.skipped) > 20:
        log.warning("cachefs.entries_skipped", count=len(tree.skipped))
    return GocryptfsVolume(source, config, keys, tree, entries)
