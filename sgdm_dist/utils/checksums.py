"""sha256 of files and folders, and the check of a folder against its ``checksums.json``.

Shared by the registry (``sgdm register`` / ``sgdm pull``), the MLflow pyfunc loader and the
checkpoint writer, so every reader verifies the same list the same way. It imports nothing of the
package, which keeps ``registry`` and ``pyfunc_model`` free of an import circle.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

CHECKSUMS = "checksums.json"
PULLED = "pulled.json"
UNCHECKED = frozenset({CHECKSUMS, PULLED})  # the files checksums.json does not list
FORMAT = "sgdm-dist/checksums"


class ChecksumError(ValueError):
    """A folder whose files do not match the recorded sha256 list; the message names each file."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def folder_checksums(root: Path) -> dict[str, str]:
    """``{relative posix path: sha256}`` of every file under ``root`` except checksums/pull info."""
    root = Path(root)
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).as_posix() not in UNCHECKED
    }


def write_checksums(root: Path) -> str:
    """Write ``root/checksums.json`` listing every file; returns the sha256 of that file."""
    data = {"format": FORMAT, "algorithm": "sha256", "files": folder_checksums(root)}
    path = Path(root) / CHECKSUMS
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return sha256_file(path)


def verify_folder(root: Path, expected_digest: str | None = None) -> dict[str, str]:
    """Check ``root`` against its ``checksums.json``; returns ``{file: sha256}``.

    ``expected_digest`` (the sha256 of checksums.json recorded in the registry) anchors the list
    itself; without it only the consistency of the folder with its own list is checked. Raises
    ChecksumError naming every file that is missing, unexpected or changed.
    """
    root = Path(root)
    listing = root / CHECKSUMS
    if not listing.is_file():
        raise ChecksumError(f"{root}: no {CHECKSUMS}; not a registered SGDM model folder")
    if expected_digest is not None and sha256_file(listing) != expected_digest:
        raise ChecksumError(
            f"checksum mismatch: {listing} differs from the sha256 recorded at registration "
            f"({expected_digest[:12]}…); the artifact was modified after it was registered"
        )
    try:
        recorded = json.loads(listing.read_text())["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ChecksumError(f"{listing}: unreadable checksum list ({exc})") from None
    present = folder_checksums(root)
    problems = [f"missing {name}" for name in sorted(set(recorded) - set(present))]
    problems += [f"unexpected {name}" for name in sorted(set(present) - set(recorded))]
    problems += [
        f"changed {name} (sha256 {present[name][:12]}…, recorded {recorded[name][:12]}…)"
        for name in sorted(set(recorded) & set(present))
        if present[name] != recorded[name]
    ]
    if problems:
        raise ChecksumError(f"checksum mismatch in {root}: " + "; ".join(problems))
    return present
