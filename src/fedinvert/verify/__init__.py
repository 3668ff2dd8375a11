"""The client's defence against a malicious server (issue 11, the survey's third defence phase): check the
model it received against the agreed architecture before computing an update on it.

    from fedinvert.verify import verify_model
    verdict = verify_model(received, {"name": "convnet", "in_channels": 1, "num_classes": 10, "image_size": 28})
    if verdict.suspicious:
        print(verdict.summary())

``fedinvert verify-model FILE model=NAME ...`` runs the same checks on a safetensors file.
"""

from fedinvert.verify.checks import Reference, resolve_reference, verify_model
from fedinvert.verify.files import read_state
from fedinvert.verify.verdict import Finding, Verdict

__all__ = ["Finding", "Reference", "Verdict", "read_state", "resolve_reference", "verify_model"]
