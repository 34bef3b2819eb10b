#!/usr/bin/env python3
"""Print `export LATIGO_...` lines for the values in local_config.yaml, for the shell to `eval`.

    eval "$(./set_env.py)"      # or: eval $(./set_env.py)

First run: when the config file is missing, it is created from local_config.yaml.template and the
script says so on stderr, prints nothing on stdout and exits 0: edit the new file, then run again
(exporting the template's values would only pin the defaults in the environment).

Later runs print one line per configured value, in file order: `section: {key: value}` becomes
`export LATIGO_SECTION__KEY=value;`. Scalars are exported as written; lists and mappings as
one-line YAML flow text, which latigo reads back into the same values. Values are quoted with
shlex.quote; a value with newlines, tabs, runs of spaces, other control or glob characters is
written in the $'...' form (bash, zsh, ksh; not dash) instead, so that even the unquoted
`eval $(./set_env.py)`, which splits words and expands globs, sets it exactly. The trailing `;`
keeps the lines apart when the unquoted form joins them into one.

A broken file is reported on stderr as one line with file:line, exit status 2.
Only the standard library and PyYAML: this runs before latigo is installed.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import sys
from pathlib import Path

import yaml

ENV_PREFIX = "LATIGO_"
EXIT_ERROR = 2
HERE = Path(__file__).resolve().parent
_NAME = re.compile(r"^[A-Za-z0-9]+(_[A-Za-z0-9]+)*$")


class ConfigLoader(yaml.SafeLoader):
    """The same reading rules as latigo.config: YAML 1.2 numbers, no timestamps ("12:30" stays text)."""


ConfigLoader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?(0|[1-9][0-9_]*|0x[0-9a-fA-F_]+|0o[0-7_]+)$"), list("-+0123456789")
)
ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d[\d_]*\.\d*([eE][-+]?\d+)?|\.\d+([eE][-+]?\d+)?|\d+[eE][-+]?\d+|\.(inf|Inf|INF)|\.(nan|NaN|NAN))$"),
    list("-+0123456789."),
)


class FlowDumper(yaml.SafeDumper):
    """Writes collections back with the loader's rules, so plain scalars keep the type they were read as."""


FlowDumper.yaml_implicit_resolvers = ConfigLoader.yaml_implicit_resolvers


class SetEnvError(Exception):
    """Something the user must fix; the message is one line."""


def read_config(path: Path) -> yaml.Node | None:
    """The file's YAML node tree (not values: scalars are exported exactly as written)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise SetEnvError(f"cannot read {path}: {reason}") from None
    try:
        return yaml.compose(text, Loader=ConfigLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        problem = " ".join(str(exc.problem or exc.context or "unreadable").split())
        raise SetEnvError(f"{path}{line}: broken YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise SetEnvError(f"{path}: broken YAML: {' '.join(str(exc).split())}") from None


def assignments(path: Path, root: yaml.Node | None) -> list[tuple[str, str]]:
    """(variable, value) for every key of every section, in file order."""
    if root is None:
        return []
    if not isinstance(root, yaml.MappingNode):
        raise SetEnvError(f"{path}:{root.start_mark.line + 1}: the config file must be a mapping of sections")
    found = []
    _flatten(root)
    for section_node, body in root.value:
        section = _name(path, section_node)
        if isinstance(body, yaml.ScalarNode) and body.tag == "tag:yaml.org,2002:null":
            continue  # a section with every key commented out
        if not isinstance(body, yaml.MappingNode):
            raise SetEnvError(f"{path}:{body.start_mark.line + 1}: section {section!r} must be a mapping of keys")
        _flatten(body)
        for key_node, value_node in body.value:
            variable = f"{ENV_PREFIX}{section}__{_name(path, key_node)}".upper()
            found.append((variable, env_text(value_node)))
    return found


def _flatten(node: yaml.MappingNode) -> None:
    """Resolve YAML merge keys (`<<: *defaults`) in place, as loading the file would."""
    ConfigLoader("").flatten_mapping(node)


def _name(path: Path, node: yaml.Node) -> str:
    if not isinstance(node, yaml.ScalarNode) or not _NAME.match(node.value):
        shown = node.value if isinstance(node, yaml.ScalarNode) else "a collection"
        raise SetEnvError(
            f"{path}:{node.start_mark.line + 1}: key {shown!r} cannot be part of an environment variable name "
            "(use letters, digits and single underscores)"
        )
    return node.value


def env_text(node: yaml.Node) -> str:
    """A value as latigo reads it from the environment: a scalar's text, a collection's YAML flow text."""
    if isinstance(node, yaml.ScalarNode):
        return node.value
    _set_flow(node)
    text = yaml.serialize(node, Dumper=FlowDumper, width=float("inf"), allow_unicode=True)
    return text.rstrip("\n")


def _set_flow(node: yaml.Node) -> None:
    if isinstance(node, yaml.SequenceNode | yaml.MappingNode):
        node.flow_style = True


# What an unquoted $(...) would change: newlines, tabs and runs of spaces (word splitting; `eval` rejoins words with
# one space, so a lone space survives), and glob characters (pathname expansion; nullglob would drop the word).
_UNSAFE_UNQUOTED = re.compile(r"[\x00-\x1f\x7f*?\[]|  ")


def shell_quote(value: str) -> str:
    """shlex.quote, or bash's $'...' when an unquoted `eval $(./set_env.py)` could change the value."""
    if not _UNSAFE_UNQUOTED.search(value):
        return shlex.quote(value)
    escaped = []
    for index, ch in enumerate(value):
        if ch in "\\'":
            escaped.append("\\" + ch)
        elif ch in "*?[" or ch < " " or ch == "\x7f" or (ch == " " and index and value[index - 1] == " "):
            escaped.append(f"\\x{ord(ch):02x}")
        else:
            escaped.append(ch)
    return "$'" + "".join(escaped) + "'"


def export_lines(path: Path) -> list[str]:
    return [f"export {name}={shell_quote(value)};" for name, value in assignments(path, read_config(path))]


def create_from_template(path: Path, template: Path) -> None:
    if not template.is_file():
        raise SetEnvError(f"{path} does not exist and there is no template {template} to create it from")
    try:
        shutil.copyfile(template, path)
    except OSError as exc:
        raise SetEnvError(f"cannot create {path}: {exc.strerror}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Print shell-quoted `export LATIGO_...` lines for the values in the config file "
        '(use: eval "$(./set_env.py)"). Creates the file from the template when it is missing.'
    )
    parser.add_argument("--file", type=Path, default=Path("local_config.yaml"), help="default: ./local_config.yaml")
    parser.add_argument(
        "--template", type=Path, default=HERE / "local_config.yaml.template",
        help="copied to --file when that is missing (default: local_config.yaml.template beside this script)",
    )
    args = parser.parse_args(argv)
    try:
        if not args.file.exists():
            create_from_template(args.file, args.template)
            message = f"created {args.file} from {args.template}; edit it, then run this again"
            print(f"set_env.py: {message}", file=sys.stderr)
            return 0
        lines = export_lines(args.file)
    except SetEnvError as exc:
        print(f"set_env.py: {exc}", file=sys.stderr)
        return EXIT_ERROR
    sys.stdout.write("".join(line + "\n" for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
