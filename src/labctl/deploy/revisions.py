"""Revisions as the journal keeps them: every setting but the secrets.

Engine environment values and flags that look like secrets (``HF_TOKEN``, an
``api_key``) are journaled as their fingerprint only. The values live in memory,
from ``lab.toml`` or the API call that brought them, so a rollback or an adoption
after a restart fills them back in; a revision whose secret the lab no longer
holds cannot be restored, and the error names the setting to put back.
"""

from __future__ import annotations

import json
import re
from typing import Any

from labctl.config import DeploymentSpec
from labctl.deploy.journal import Journal
from labctl.errors import DeployError, LabError
from labctl.secrets import SecretArg, fingerprint, looks_secret, secret_argv

#: How a secret setting is journaled: the fingerprint stands in for the value.
_SECRET_REF = re.compile(r"^<secret (sha256:[0-9a-f]{16})>$")


class Revisions:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        #: Secret settings by fingerprint (from lab.toml and API calls; never journaled).
        self.secrets: dict[str, Any] = {}

    def add(self, spec: DeploymentSpec) -> int:
        """Journal ``spec`` as a new revision of its deployment; returns its number."""
        return self.journal.add_revision(spec.name, self.journaled(spec))

    def remember(self, spec: DeploymentSpec) -> None:
        """Keep the values of ``spec``'s secret settings, so that a revision journaled with
        their fingerprints can be restored while this lab runs."""
        self.journaled(spec)

    def journaled(self, spec: DeploymentSpec) -> dict[str, Any]:
        """``spec`` as the journal stores it: each secret as its fingerprint (the values kept
        here): env and args values secret by their name (of any type) or by their shape (list
        items too), and the items of a ``command`` that are."""
        doc = spec.to_dict()
        for table in ("env", "args"):
            doc[table] = {k: self._hide(v, looks_secret(k, "")) for k, v in doc[table].items()}
        doc["command"] = [self._hide(v, False) for v in secret_argv(doc["command"])]
        return doc

    def _hide(self, value: Any, by_name: bool) -> Any:
        if by_name or (isinstance(value, str) and looks_secret("", value)):
            ref = fingerprint(json.dumps(value, sort_keys=True))
            self.secrets[ref] = value
            return f"<secret {ref}>"
        if isinstance(value, list):
            return [self._hide(v, False) for v in value]
        if isinstance(value, SecretArg):
            return self._hide(value.value, True)
        return value

    def restore(self, name: str, revision: int) -> DeploymentSpec:
        """A journaled revision, its secret settings filled in from the values this lab holds.

        Raises:
            DeployError: no such revision, or a secret it needs is not held any more.
        """
        doc = self.journal.revision(name, revision)

        def back(value: Any, where: str) -> Any:
            if isinstance(value, list):
                return [back(v, where) for v in value]
            m = _SECRET_REF.match(value) if isinstance(value, str) else None
            if m is None:
                return value
            if m.group(1) not in self.secrets:
                raise DeployError(
                    f"{name} revision {revision} needs {where} ({m.group(1)}), which this lab "
                    f"does not hold since it restarted; set it in lab.toml's deployments.{name} "
                    "and restart the lab"
                )
            return self.secrets[m.group(1)]

        for table in ("env", "args"):
            doc[table] = {k: back(v, f"{table}.{k}") for k, v in (doc.get(table) or {}).items()}
        doc["command"] = back(doc.get("command") or [], "command")
        try:
            return DeploymentSpec.from_dict(name, doc, where=f"{name} revision {revision}")
        except LabError as exc:
            raise DeployError(str(exc)) from None
