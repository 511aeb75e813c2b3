"""Policies of the Trustee stand-in (development and tests only): AS default text, resource policy.

The AS policy text matters only through its SHA-384, which Trustee puts in every token's
``evaluation-reports[].policy-hash``; the text below is byte-identical to openanolis Trustee v1.5.2
``attestation-service/src/token/simple_default_policy.rego`` so the hash matches real tokens.
The stand-in does not run OPA: every known attestation policy allows. The resource policy is a
small glob allow-list, enough to reproduce Trustee's allow / 403 ``PolicyDeny`` split.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Sequence

from attestation_agent.kbs.resource import ResourcePath

# Tabs and the full-width full stop are part of the upstream file; keep them.
SIMPLE_DEFAULT_POLICY = (
    '# Attestation Service Default Policy\n'
    '#\n'
    '# The function of this policy is to adopt the default policy when no custom policy\n'
    '# is provided in the attestation request of Attestation Service.\n'
    '#\n'
    '# - The input data required by this default policy is a set of key value pairs:\n'
    '#\n'
    '#\t{\n'
    '#\t\t"sample1": "112233",\n'
    '#\t\t"sample2": "332211",\n'
    '#\t\t...\n'
    '#\t}\n'
    '#\n'
    '# - The format of reference data required by this default policy is defined as follows:\n'
    '#\n'
    '#\t{\n'
    '#\t\t"reference": {\n'
    '#\t\t\t"sample1": ["112233", "223311"],\n'
    '#\t\t\t"sample2": "332211",\n'
    '#\t\t\t"sample3": [],\n'
    '#\t\t\t...\n'
    '#\t\t}\n'
    '#\t}\n'
    '#\n'
    '# If the default policy is used for verification, the reference meeting the above format\n'
    '# needs to be provided in the attestation request, otherwise the Attestation Service will\n'
    '# automatically generate a reference data meeting the above format.\n'
    'package policy\n'
    '\n'
    'import future.keywords.every\n'
    'import future.keywords.if\n'
    '\n'
    'default allow := false\n'
    '\n'
    'allow if {\n'
    '\tevery k, v in input {\n'
    '\t\t# `judge_field`: Traverse each key value pair in the input and make policy judgments on it.\n'
    '\t\t#\n'
    '\t\t# For each key value pair:\n'
    "\t\t#\t* If there isn't a corresponding key in the reference:\n"
    '\t\t#\t\tIt is considered that the current key value pair has passed the verification.\n'
    '\t\t#\t* If there is a corresponding key in the reference:\n'
    '\t\t#\t\tCall `match_value` to further judge the value in input with the value in reference.\n'
    '\t\tjudge_field(k, v)\n'
    '\t}\n'
    '}\n'
    '\n'
    'judge_field(input_key, input_value) if {\n'
    '\thas_key(data.reference, input_key)\n'
    '\treference_value := data.reference[input_key]\n'
    '\n'
    '\t# `match_value`: judge the value in input with the value in reference.\n'
    '\t#\n'
    '\t# * If the type of reference value is not array:\n'
    '\t#\t\tJudge whether input value and reference value are equal。\n'
    '\t# * If the type of reference value is array:\n'
    '\t#\t\tCall `array_include` to further judge the input value with the values in the array.\n'
    '\tmatch_value(reference_value, input_value)\n'
    '}\n'
    '\n'
    'judge_field(input_key, input_value) if {\n'
    '\tnot has_key(data.reference, input_key)\n'
    '}\n'
    '\n'
    'match_value(reference_value, input_value) if {\n'
    '\tnot is_array(reference_value)\n'
    '\tinput_value == reference_value\n'
    '}\n'
    '\n'
    'match_value(reference_value, input_value) if {\n'
    '\tis_array(reference_value)\n'
    '\n'
    '\t# `array_include`: judge the input value with the values in the array.\n'
    '\t#\n'
    '\t# * If the reference value array is empty:\n'
    '\t#\t\tIt is considered that the current input value has passed the verification.\n'
    '\t# * If the reference value array is not empty:\n'
    '\t#\t\tJudge whether there is a value equal to input value in the reference value array.\n'
    '\tarray_include(reference_value, input_value)\n'
    '}\n'
    '\n'
    'array_include(reference_value_array, input_value) if {\n'
    '\treference_value_array == []\n'
    '}\n'
    '\n'
    'array_include(reference_value_array, input_value) if {\n'
    '\treference_value_array != []\n'
    '\tsome i\n'
    '\treference_value_array[i] == input_value\n'
    '}\n'
    '\n'
    'has_key(m, k) if {\n'
    '\t_ = m[k]\n'
    '}\n'
)


def policy_hash(text: str) -> str:
    """``policy-hash`` as Trustee's OPA engine reports it: SHA-384 hex of the policy text."""
    return hashlib.sha384(text.encode("utf-8")).hexdigest()


def resource_allowed(policy: str | Sequence[str], path: ResourcePath) -> bool:
    """Evaluate the resource policy for ``repo/type/tag``.

    ``allow_all`` is Trustee 1.5.2's built-in ``default allow = true``; a sequence is an allow-list
    of ``fnmatch`` globs matched against the whole path (``*`` may not cross a ``/``, because
    each pattern segment is matched against its own path segment).
    """
    if policy == "allow_all":
        return True
    if policy == "deny_all" or isinstance(policy, str):
        return False
    segments = (path.repository, path.type, path.tag)
    for pattern in policy:
        parts = pattern.split("/")
        if len(parts) == 3 and all(fnmatch.fnmatchcase(s, p) for s, p in zip(segments, parts, strict=True)):
            return True
    return False
