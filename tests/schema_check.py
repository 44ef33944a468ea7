#!/usr/bin/env python3
"""Checks TOML files against one of runnel's JSON Schemas (schemas/*.schema.json).

    python3 tests/schema_check.py SCHEMA FILE...

A FILE is a TOML file, or `FILE.yaml#KEY` for the TOML text under `data.KEY` of
a Kubernetes ConfigMap in a YAML file. The schema itself is checked first
against draft 2020-12's meta-schema (exit 2 if it is not valid). Then one JSON
line per file is printed, `{"file": ..., "errors": [{"path", "message"}]}`, and
the exit code is 0: tests/schema.rs decides what is expected.

Each error is reported where runnel's own reader reports it, so the two can be
compared: at the dotted path of the field (`sinks.hook.url`, list items as
`[n]`); a missing field or an unknown one at its own path; in a table chosen
by its `type` (a source, a sink, a backend), only the errors of the variant
its `type` names, or `<table>.type` when it names none.

Needs python3.11 (tomllib), jsonschema and PyYAML (scripts/test installs them).
"""

import json
import sys

try:
    import tomllib

    import jsonschema
    import yaml
except ImportError as error:  # exit 3: the Rust test says how to get them
    print(
        f"schema_check.py needs python3 >= 3.11 with jsonschema and PyYAML: {error} "
        "(scripts/test installs them: scripts/setup.sh)",
        file=sys.stderr,
    )
    sys.exit(3)


def dotted(path):
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def tag(schema):
    """The `type` a variant of a discriminated `oneOf` stands for, if it is one."""
    if isinstance(schema, dict):
        kind = schema.get("properties", {}).get("type", {})
        if isinstance(kind, dict) and "const" in kind:
            return kind["const"]
    return None


def leaves(error):
    """(path, message) pairs for one jsonschema error, placed as runnel places them."""
    path = list(error.absolute_path)
    validator = error.validator
    if validator in ("oneOf", "anyOf") and error.context:
        branches = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        alternatives = error.validator_value
        tagged = [i for i, s in enumerate(alternatives) if tag(s) is not None]
        if tagged and isinstance(error.instance, dict):
            instance = error.instance
            if "type" in instance:
                chosen = [i for i in tagged if tag(alternatives[i]) == instance["type"]]
            else:
                chosen = [i for i in tagged if "type" not in alternatives[i].get("required", [])]
            if chosen:
                return [leaf for sub in branches.get(chosen[0], []) for leaf in leaves(sub)]
            names = ", ".join(json.dumps(tag(alternatives[i])) for i in tagged)
            if "type" not in instance:
                return [(path + ["type"], f"missing required field; expected one of {names}")]
            return [(path + ["type"], f"unknown type {instance['type']!r}; expected one of {names}")]
        # Alternatives without a tag (one of several keys): the one that comes closest.
        _, best = min(sorted(branches.items()), key=lambda item: len(item[1]))
        return [leaf for sub in best for leaf in leaves(sub)]
    if validator == "required":
        missing = [key for key in error.validator_value if key not in error.instance]
        return [(path + [key], "missing required field") for key in missing]
    if validator == "additionalProperties" and isinstance(error.instance, dict):
        known = error.schema.get("properties", {})
        extra = [key for key in error.instance if key not in known]
        expected = ", ".join(sorted(known))
        return [(path + [key], f"unknown field; expected one of: {expected}") for key in extra]
    if "propertyNames" in error.relative_schema_path:
        return [(path + [error.instance], f"{error.instance!r}: {message(error)}")]
    return [(path, message(error))]


def message(error):
    """The schema's own words for a mismatch where it has them (`errorMessage`,
    `patternErrorMessage`, as VS Code's JSON support names them)."""
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "not":
        inner = error.validator_value if isinstance(error.validator_value, dict) else {}
        if "errorMessage" in schema or "errorMessage" in inner:
            return schema.get("errorMessage") or inner["errorMessage"]
    if error.validator == "pattern" and "patternErrorMessage" in schema:
        return f"{error.instance!r}: {schema['patternErrorMessage']}"
    return error.message


# Keywords whose subschemas only restrict (forbid a key, require another):
# their properties are documented where they are declared.
CONDITIONAL = {"if", "then", "else", "not", "dependentSchemas"}


def undescribed(schema):
    """Dotted places of properties that have no `description` (directly or
    through their `$ref`): editors show it on hover and completion."""

    def resolve(node):
        while isinstance(node, dict) and "$ref" in node and "description" not in node:
            target = schema
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
        return node

    found = []

    def walk(node, where):
        if isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{where}/{i}")
        elif isinstance(node, dict):
            for key, value in node.items():
                if key in CONDITIONAL:
                    continue
                if key == "properties" and isinstance(value, dict):
                    for name, sub in value.items():
                        target = resolve(sub)
                        if not (isinstance(target, dict) and target.get("description")):
                            found.append(f"{where}/properties/{name}")
                walk(value, f"{where}/{key}")

    walk(schema, "#")
    return found


def load(argument):
    """The TOML text a FILE argument names."""
    if "#" in argument:
        file, key = argument.split("#", 1)
        with open(file, encoding="utf-8") as f:
            for document in yaml.safe_load_all(f):
                if document and document.get("kind") == "ConfigMap" and key in document.get("data", {}):
                    return document["data"][key]
        raise KeyError(f"no ConfigMap in {file} has data.{key}")
    with open(argument, encoding="utf-8") as f:
        return f.read()


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    schema_path, files = argv[1], argv[2:]
    with open(schema_path, encoding="utf-8") as f:
        schema = json.load(f)
    validator_class = jsonschema.Draft202012Validator
    try:
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as error:
        print(f"{schema_path} is not a valid draft 2020-12 schema: {error}", file=sys.stderr)
        return 2
    if schema.get("$schema") != "https://json-schema.org/draft/2020-12/schema":
        print(f"{schema_path} does not declare draft 2020-12 in $schema", file=sys.stderr)
        return 2
    missing = undescribed(schema)
    if missing:
        print(f"{schema_path}: properties without a description: {missing}", file=sys.stderr)
        return 2
    validator = validator_class(schema)
    for argument in files:
        try:
            document = tomllib.loads(load(argument))
        except tomllib.TOMLDecodeError as error:
            found = [("", f"not TOML: {error}")]
        else:
            found = [leaf for error in validator.iter_errors(document) for leaf in leaves(error)]
        errors = []
        for path, text in found:
            error = {"path": dotted(path), "message": text}
            if error not in errors:
                errors.append(error)
        print(json.dumps({"file": argument, "errors": errors}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
