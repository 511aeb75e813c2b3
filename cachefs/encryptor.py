"""``cai cachefs encrypt SRC DST --passfile F``: write a gocryptfs-compatible volume without gocryptfs.

Model owners get a volume the real ``gocryptfs`` mounts and reads identically (default v2 flags),
plus an optional manifest (``cai-manifest.json`` in the volume root) whose digest they store in
Trustee next to the key. Plaintext is streamed 1 MiB at a time and never cached; the walk never
follows symlinks (they are stored as encrypted links). Zero runs are encrypted, never turned into
holes, so the volume also passes ``strict`` mode.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cachefs.errors import CachefsError
from cachefs.gocryptfs import content
from cachefs.gocryptfs.config import CONF_NAME, build_config, parse_config, password_from_secret, unlock
from cachefs.gocryptfs.content import PLAIN_BLOCK, ContentCipher
from cachefs.gocryptfs.keys import derive_keys
from cachefs.gocryptfs.names import DIRIV_LEN, DIRIV_NAME, LONGNAME_SUFFIX, NameCodec
from cachefs.gocryptfs.symlink import encrypt_target
from cachefs.manifest import MANIFEST_NAME, ManifestEntry, build_manifest, manifest_digest

READ_SIZE = 256 * PLAIN_BLOCK


class EncryptorError(CachefsError):
    """The encryptor cannot proceed (bad source, non-empty destination, unreadable passfile)."""


@dataclass
class EncryptResult:
    """What was written; ``manifest_digest`` is set when a manifest was requested."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    plain_bytes: int = 0
    skipped: list[str] = field(default_factory=list)
    manifest_digest: str | None = None


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.chmod(path, mode)


class VolumeWriter:
    """Encrypts a plaintext tree into a fresh cipher directory."""

    def __init__(self, dst: Path, password: bytes, *, scrypt_n: int = 1 << 16, manifest: bool = False) -> None:
        self.dst = dst
        self.want_manifest = manifest
        if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
            raise EncryptorError(f"destination {dst} exists and is not an empty directory",
                                 hint="choose a new or empty directory")
        dst.mkdir(parents=True, exist_ok=True)
        master = os.urandom(32)
        conf = build_config(master, password, scrypt_n=scrypt_n, creator="cai cachefs encrypt")
        self.config = parse_config(conf)
        if unlock(self.config, password) != master:  # self-check of what we just wrote
            raise EncryptorError("internal error: the written config does not unlock")
        keys = derive_keys(master)
        self.names = NameCodec(self.config, keys.names)
        self.cipher = ContentCipher(keys.content)
        _write_new(dst / CONF_NAME, conf, 0o400)
        self.manifest: dict[str, ManifestEntry] = {}
        self.result = EncryptResult()

    def _new_dir_iv(self, cdir: Path) -> bytes:
        iv = os.urandom(DIRIV_LEN)
        _write_new(cdir / DIRIV_NAME, iv, 0o440)
        return iv

    def encrypt_tree(self, src: Path) -> EncryptResult:
        """Walk ``src`` (no symlink following) and write every entry; returns counts."""
        if not src.is_dir():
            raise EncryptorError(f"source {src} is not a directory")
        self._encrypt_dir(src, self.dst, "", self._new_dir_iv(self.dst))
        if self.want_manifest:
            data = build_manifest(self.manifest)
            _write_new(self.dst / MANIFEST_NAME, data, 0o444)
            self.result.manifest_digest = manifest_digest(data)
        return self.result

    def _encrypt_dir(self, src: Path, cdir: Path, crel: str, iv: bytes) -> None:
        with os.scandir(src) as it:
            children = sorted(it, key=lambda e: e.name)
        for child in children:
            st = child.stat(follow_symlinks=False)
            name = os.fsencode(child.name)
            enc = self.names.encrypt(name, iv)
            target = cdir / enc.stored
            rel = f"{crel}/{enc.stored}" if crel else enc.stored
            if enc.longname_content is not None:
                _write_new(cdir / (enc.stored + LONGNAME_SUFFIX), enc.longname_content, 0o400)
            if stat.S_ISDIR(st.st_mode):
                target.mkdir(mode=0o700)
                sub_iv = self._new_dir_iv(target)
                self._encrypt_dir(Path(child.path), target, rel, sub_iv)
                os.chmod(target, stat.S_IMODE(st.st_mode) | 0o300)  # owner must keep write/search for gocryptfs
                self.result.dirs += 1
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(encrypt_target(self.cipher, os.fsencode(os.readlink(child.path))), target)
                self.result.symlinks += 1
            elif stat.S_ISREG(st.st_mode):
                self._encrypt_file(Path(child.path), target, rel, stat.S_IMODE(st.st_mode))
                self.result.files += 1
            else:
                self.result.skipped.append(child.path)

    def _encrypt_file(self, src: Path, target: Path, rel: str, mode: int) -> None:
        file_id = os.urandom(content.FILE_ID_LEN)
        digest = hashlib.sha256()
        size = 0
        block = 0
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with open(src, "rb") as f:
                while data := f.read(READ_SIZE):
                    out = bytearray()
                    if block == 0:
                        out += content.make_header(file_id)
                    for start in range(0, len(data), PLAIN_BLOCK):
                        out += self.cipher.encrypt_block(data[start:start + PLAIN_BLOCK], block, file_id)
                        block += 1
                    digest.update(out)
                    size += len(out)
                    view = memoryview(out)
                    while view:
                        view = view[os.write(fd, view):]
                    self.result.plain_bytes += len(data)
                    if len(data) % PLAIN_BLOCK:
                        # A short read mid-file would misalign blocks; read to EOF strictly.
                        if f.read(1):
                            raise EncryptorError(f"{src} changed while it was being encrypted")
                        break
        finally:
            os.close(fd)
        os.chmod(target, mode | 0o400)
        self.manifest[rel] = ManifestEntry(size, file_id.hex() if size else "", digest.hexdigest())


def encrypt_directory(src: Path, dst: Path, secret: bytes, *, scrypt_n: int = 1 << 16,
                      manifest: bool = False) -> EncryptResult:
    """Encrypt ``src`` into a new gocryptfs volume at ``dst`` with the password in ``secret`` (first line)."""
    password = password_from_secret(secret, "the passfile")
    return VolumeWriter(dst, password, scrypt_n=scrypt_n, manifest=manifest).encrypt_tree(src)
