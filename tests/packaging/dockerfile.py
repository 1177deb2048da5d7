"""Just enough of a Dockerfile and .dockerignore reader to replay a build's steps without Docker.

`parse(text)` returns the stages with their ARG defaults, ENV and RUN instructions (`--mount`
flags split off); `context_files(root, ignore_text)` lists what `docker build` would send as the
build context under the .dockerignore rules (Go `filepath.Match` patterns plus `**`, last match
wins, `!` re-includes, a path is excluded with its excluded parent).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
from pathlib import Path


@dataclasses.dataclass
class Run:
    command: str
    mounts: list[dict[str, str]]
    line: int


@dataclasses.dataclass
class Stage:
    name: str
    base: str
    args: dict[str, str] = dataclasses.field(default_factory=dict)
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    runs: list[Run] = dataclasses.field(default_factory=list)
    copies: list[tuple[list[str], str]] = dataclasses.field(default_factory=list)
    user: str | None = None
    workdir: str = "/"
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    cmd: str | None = None


@dataclasses.dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        found = [s for s in self.stages if s.name == name]
        if not found:
            raise KeyError(f"no stage {name!r}; stages: {[s.name for s in self.stages]}")
        return found[0]


def instructions(text: str) -> list[tuple[int, str, str]]:
    """(line number, INSTRUCTION, arguments) with continuations joined and comments dropped."""
    out: list[tuple[int, str, str]] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if not buf:
            start = number
        if line.endswith("\\"):
            buf.append(line[:-1].rstrip())
            continue
        buf.append(line)
        joined = " ".join(b for b in buf if b)
        buf = []
        keyword, _, rest = joined.partition(" ")
        out.append((start, keyword.upper(), rest.strip()))
    return out


def expand(value: str, variables: dict[str, str]) -> str:
    """`$VAR` and `${VAR}` as the Dockerfile frontend expands them (unknown names become '')."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), ""), value)


def _pairs(rest: str) -> dict[str, str]:
    out = {}
    for token in shlex.split(rest):
        key, sep, value = token.partition("=")
        out[key] = value if sep else ""
    return out


def parse(text: str) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, keyword, rest in instructions(text):
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name=name, base=expand(words[0], global_args)))
            continue
        if not stages:
            if keyword == "ARG":
                global_args.update(_pairs(rest))
            continue
        st = stages[-1]
        if keyword == "ARG":
            for key, value in _pairs(rest).items():
                st.args[key] = value or global_args.get(key, "")
        elif keyword == "ENV":
            st.env.update({k: expand(v, {**st.args, **st.env}) for k, v in _pairs(rest).items()})
        elif keyword == "LABEL":
            st.labels.update({k: expand(v, {**global_args, **st.args}) for k, v in _pairs(rest).items()})
        elif keyword == "RUN":
            mounts = []
            while rest.startswith("--"):
                flag, _, rest = rest.partition(" ")
                if flag.startswith("--mount="):
                    mounts.append(dict(kv.split("=", 1) for kv in flag[len("--mount=") :].split(",")))
                rest = rest.strip()
            st.runs.append(Run(rest, mounts, line))
        elif keyword == "COPY":
            words = [w for w in shlex.split(rest) if not w.startswith("--")]
            st.copies.append((words[:-1], words[-1]))
        elif keyword == "USER":
            st.user = rest
        elif keyword == "WORKDIR":
            st.workdir = rest
        elif keyword == "CMD":
            st.cmd = rest
    return Dockerfile(global_args, stages)


# ---------------------------------------------------------------------------------------------
# .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def ignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes, regex) per non-comment line, in order."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line[1:] if negate else line).lstrip("/")
        rules.append((not negate, _pattern_regex(pattern)))
    return rules


def excluded(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether `path` (relative, '/'-separated) stays out of the context."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for excludes, regex in rules:
        if any(regex.match(p) for p in prefixes):
            result = excludes
    return result


def context_files(root: Path, ignore_text: str) -> list[str]:
    """The files of the build context, relative to `root`, sorted.

    A directory whose every path is excluded is not walked unless a `!` rule could re-include
    something under it (keeps `.venv` and `.git` out of the walk).
    """
    rules = ignore_rules(ignore_text)
    negations = [r for ex, r in rules if not ex]
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        keep = []
        for d in dirnames:
            rel = f"{rel_dir}/{d}" if rel_dir else d
            if excluded(rel, rules) and not any(n.pattern.startswith(re.escape(rel)) for n in negations):
                continue
            keep.append(d)
        dirnames[:] = sorted(keep)
        for f in filenames:
            rel = f"{rel_dir}/{f}" if rel_dir else f
            if not excluded(rel, rules):
                files.append(rel)
    return sorted(files)
