"""Revisions as the journal keeps them: every setting but the secrets.

Engine environment values and flags that look like secrets (``HF_TOKEN``, an
``api_key``) are journaled as their fingerprint only. The values live in memory,
from ``lab.toml`` or the API call that brought them, so a rollback or an adoption
after a restart fills them back in; a revision whose secret the lab no longer
holds cannot be restored, and the error names the setting to put back.
"""

from __future__ import annotations

import re
from typing import Any

from labctl.config import DeploymentSpec
from labctl.deploy.journal import Journal
from labctl.errors import DeployError, LabError
from labctl.secrets import fingerprint, looks_secret

#: How a secret setting is journaled: the fingerprint stands in for the value.
_SECRET_REF = re.compile(r"^<secret (sha256:[0-9a-f]{16})>$")


class Revisions:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        #: Secret settings by fingerprint (from lab.toml and API calls; never journaled).
        self.secrets: dict[str, str] = {}

    def add(self, spec: DeploymentSpec) -> int:
        """Journal ``spec`` as a new revision of its deployment; returns its number."""
        self.remember(spec)
        return self.journal.add_revision(spec.name, self.journaled(spec))

    def remember(self, spec: DeploymentSpec) -> None:
        """Keep the values of ``spec``'s secret settings, so that a revision journaled with
        their fingerprints can be restored while this lab runs."""
        for _, value in _secret_settings(spec):
            self.secrets[fingerprint(value)] = value

    def journaled(self, spec: DeploymentSpec) -> dict[str, Any]:
        """``spec`` as the journal stores it: each secret setting as its fingerprint."""
        doc = spec.to_dict()
        for table in ("env", "args"):
            doc[table] = {
                k: (f"<secret {fingerprint(v)}>" if isinstance(v, str) and looks_secret(k, v) else v)
                for k, v in doc[table].items()
            }  # fmt: skip
        return doc

    def restore(self, name: str, revision: int) -> DeploymentSpec:
        """A journaled revision, its secret settings filled in from the values this lab holds.

        Raises:
            DeployError: no such revision, or a secret it needs is not held any more.
        """
        doc = self.journal.revision(name, revision)
        for table in ("env", "args"):
            values = dict(doc.get(table) or {})
            for key, value in values.items():
                m = _SECRET_REF.match(value) if isinstance(value, str) else None
                if m is None:
                    continue
                if m.group(1) not in self.secrets:
                    raise DeployError(
                        f"{name} revision {revision} needs {table}.{key} ({m.group(1)}), which "
                        f"this lab does not hold since it restarted; set it in lab.toml's "
                        f"deployments.{name}.{table} and restart the lab"
                    )
                values[key] = self.secrets[m.group(1)]
            doc[table] = values
        try:
            return DeploymentSpec.from_dict(name, doc, where=f"{name} revision {revision}")
        except LabError as exc:
            raise DeployError(str(exc)) from None


def _secret_settings(spec: DeploymentSpec) -> list[tuple[str, str]]:
    return [(k, v) for table in (spec.env, spec.args) for k, v in table.items()
            if isinstance(v, str) and looks_secret(k, v)]  # fmt: skip
