"""The ``decrypt`` and ``encrypt`` steps: OpenPGP through Debian's ``gpg``, driven by python-gnupg.

Each step keeps a keyring of its own in a private temporary folder (``GNUPGHOME``) holding
only the key files its config names: the operator manages files, never a keyring. The keyring
is made at first use and made again when a key file changes (so ``ledger --retry`` after a key
is replaced takes the new one); :meth:`close` stops its gpg-agent and removes it. gpg reads the
input and writes the output itself (``--output`` into the spool), so nothing is held in memory
and Python's GIL is not held while it works. Keys named in the config are trusted as given
(``--trust-model always``): naming a key file is the operator's statement of trust.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from conveyor.config.steps import Decrypt, Encrypt
from conveyor.errors import NoSpace, Permanent
from conveyor.payload.body import CHUNK, Body, hash_file
from conveyor.payload.payload import Payload
from conveyor.payload.spool import Spool
from conveyor.steps.blocking import Produced, StepFailed, open_body, renamed

log = logging.getLogger("conveyor.steps")
logging.getLogger("gnupg").setLevel(logging.CRITICAL)  # what it would say, the step says with the flow named

GPG = "gpg"
BADSIG = "bad signature: the file was changed after it was signed, or the signature is forged"


class Keyring:
    """A private gpg home holding the named key files; made again when one of them changes."""

    def __init__(self, public: tuple[str, ...], secret: str | None, passphrase: str | None) -> None:
        self.public = public
        self.secret = secret
        self.passphrase = passphrase
        self._lock = threading.Lock()
        self._stamp: tuple[Any, ...] | None = None
        self._homes: list[str] = []
        self.gpg: Any = None
        self.public_fprs: list[set[str]] = []
        """Per public key file, the fingerprints of the keys in it."""
        self.secret_fprs: set[str] = set()

    def _stamps(self) -> tuple[Any, ...]:
        out = []
        for p in (*self.public, *([self.secret] if self.secret else [])):
            try:
                st = os.stat(p)
            except OSError as e:
                raise StepFailed(f"cannot read key file {p}: {e.strerror or e}") from None
            out.append((p, st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)

    def ready(self) -> Any:
        """The python-gnupg handle, with every key file imported as it is now."""
        with self._lock:
            stamp = self._stamps()
            if stamp != self._stamp:
                self._build()
                self._stamp = stamp
            return self.gpg

    def _build(self) -> None:
        import gnupg  # lazily: only flows with PGP steps need it

        home = tempfile.mkdtemp(prefix="conveyor-gpg-")  # 0700; short, for the agent's socket
        self._homes.append(home)
        try:
            # gpg's messages in English whatever the host's locale: they are matched below
            gpg = gnupg.GPG(gpgbinary=GPG, gnupghome=home, env={**os.environ, "LC_ALL": "C", "LANGUAGE": "C"})
        except (OSError, ValueError) as e:
            raise Permanent(f"cannot run {GPG}: {e} (install Debian's gnupg package)") from None
        gpg.buffer_size = CHUNK
        public = []
        for p in self.public:
            public.append(self._import(gpg, p, None))
        secret = self._import(gpg, self.secret, self.passphrase) if self.secret else set()
        self.gpg, self.public_fprs, self.secret_fprs = gpg, public, secret

    @staticmethod
    def _import(gpg: Any, path: str, passphrase: str | None) -> set[str]:
        data = Path(path).read_bytes()
        r = gpg.import_keys(data, passphrase=passphrase) if passphrase else gpg.import_keys(data)
        fprs = {f for f in (r.fingerprints or []) if f}
        if not fprs:
            raise StepFailed(f"no OpenPGP key in {path}")
        return fprs

    def close(self) -> None:
        """Stop the agents and remove the homes."""
        for home in self._homes:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    ["gpgconf", "--kill", "gpg-agent"],
                    env={**os.environ, "GNUPGHOME": home},
                    capture_output=True,
                    timeout=10,
                    check=False,
                )
            shutil.rmtree(home, ignore_errors=True)
        self._homes.clear()
        self._stamp = None


@contextlib.contextmanager
def _passphrase_checked() -> Iterator[None]:
    """python-gnupg refuses a passphrase with a line break in it (it is sent on gpg's stdin)."""
    try:
        yield
    except ValueError as e:
        if "passphrase" not in str(e).lower():
            raise
        raise StepFailed("the passphrase has a line break in it, which gpg cannot take") from None


def _succeeded(r: Any, what: str) -> None:
    """Whether gpg did its work. It reports DECRYPTION_OKAY even when writing the output failed
    (a full disk, ``--max-output``), so a failed exit is looked at too; but it also exits 2 for a
    signature it cannot check, which only matters when ``verify_with`` asks (checked apart)."""
    said = r.stderr or ""
    if "No space left on device" in said or "Disk quota exceeded" in said:
        raise NoSpace(f"disk full while gpg wrote to the spool: {_why(r)}")
    wrote_badly = any(w in said for w in ("error writing", "handle plaintext failed", "write error"))
    if not r.ok or wrote_badly or (r.returncode != 0 and what != "decrypt"):
        raise StepFailed(f"cannot {what}: {_why(r)}")


def _why(result: Any) -> str:
    """What gpg said went wrong, from its status lines and messages (no key material in them)."""
    lines = [ln.removeprefix("gpg: ") for ln in (result.stderr or "").splitlines() if ln.startswith("gpg: ")]
    said = "; ".join(ln for ln in lines if not ln.startswith(("encrypted with", "      ")))[:500]
    status = result.status or "failed"
    return f"{status}: {said}" if said else status


def _adopt(spool: Spool, out: Path) -> Body:
    """gpg's output as a spool body, hashed now while it is in the page cache: a body whose
    digest is known is hard-linked into a directory target rather than copied."""
    body = spool.adopt(out)
    body.set_digest(hash_file(out))
    return body


class Decryptor:
    """``decrypt``: the message decrypted into the spool; with ``verify_with``, refused unless a
    valid signature by one of those keys covers it."""

    def __init__(self, config: Decrypt, spool: Spool) -> None:
        self.config = config
        self.spool = spool
        pw = config.passphrase.get_secret_value() if config.passphrase else None
        self.keys = Keyring(config.verify_with, config.private_key_file, pw)

    def start(self, parent: Payload, stop: threading.Event) -> Iterator[Produced]:
        gpg = self.keys.ready()
        out = self.spool.new_path()
        try:
            with open_body(parent.body) as f, _passphrase_checked():
                r = gpg.decrypt_file(
                    f,
                    passphrase=self.keys.passphrase,
                    output=str(out),
                    always_trust=True,
                    extra_args=["--max-output", str(self.config.max_size)],
                )
            if "exceeded --max-output limit" in (r.stderr or ""):
                raise StepFailed(
                    f"more than {self.config.max_size} bytes decrypted, over max_size: a compression bomb?"
                )
            if "[GNUPG:] BADSIG " in (r.stderr or ""):  # gpg then fails the decryption too: say why
                raise StepFailed(BADSIG)
            _succeeded(r, "decrypt")
            if self.config.verify_with:
                self._verified(r)
            body = _adopt(self.spool, out)
        except BaseException:
            out.unlink(missing_ok=True)
            raise
        return iter([Produced(body, renamed(parent.name, (".pgp", ".gpg", ".asc")))])

    def _verified(self, r: Any) -> None:
        allowed = set().union(*self.keys.public_fprs)
        good = {
            info.get("pubkey_fingerprint")
            for info in (r.sig_info or {}).values()
            if info.get("status") == "signature valid"
        }
        if r.valid and r.pubkey_fingerprint:
            good.add(r.pubkey_fingerprint)
        if good & allowed:
            return
        status = [ln.split()[1:3] for ln in (r.stderr or "").splitlines() if ln.startswith("[GNUPG:] ")]
        seen = {(words[0], words[1] if len(words) > 1 else "") for words in status}
        if not any(w in ("NEWSIG", "GOODSIG", "BADSIG", "ERRSIG", "EXPSIG", "REVKEYSIG") for w, _ in seen):
            raise StepFailed("no signature, and verify_with requires one")
        if any(w == "BADSIG" for w, _ in seen):
            raise StepFailed(BADSIG)
        unknown = sorted(k for w, k in seen if w in ("ERRSIG", "NO_PUBKEY"))
        if unknown:
            raise StepFailed(f"signed by key {unknown[0]}, which is in no verify_with file")
        raise StepFailed(f"no valid signature by a verify_with key ({r.status or 'not verified'})")

    def close(self) -> None:
        self.keys.close()


class Encryptor:
    """``encrypt``: for every recipient, signed when ``sign_with`` is given."""

    def __init__(self, config: Encrypt, spool: Spool) -> None:
        self.config = config
        self.spool = spool
        pw = config.passphrase.get_secret_value() if config.passphrase else None
        self.keys = Keyring(config.recipients, config.sign_with, pw)

    def start(self, parent: Payload, stop: threading.Event) -> Iterator[Produced]:
        gpg = self.keys.ready()
        recipients = sorted(set().union(*self.keys.public_fprs))
        signer = sorted(self.keys.secret_fprs)[0] if self.config.sign_with else None
        out = self.spool.new_path()
        try:
            with open_body(parent.body) as f, _passphrase_checked():
                r = gpg.encrypt_file(
                    f,
                    recipients,
                    sign=signer,
                    passphrase=self.keys.passphrase,
                    armor=self.config.armor,
                    always_trust=True,
                    output=str(out),
                )
            _succeeded(r, "encrypt")
            body = _adopt(self.spool, out)
        except BaseException:
            out.unlink(missing_ok=True)
            raise
        suffix = ".asc" if self.config.armor else ".pgp"
        return iter([Produced(body, None if parent.name is None else parent.name + suffix)])

    def close(self) -> None:
        self.keys.close()
