"""Shell completion scripts written from a command's own argparse tree.

`tensorgrid completion bash` prints a script for `source` (or ~/.bash_completion.d); the zsh
one is the same script behind zsh's bashcompinit. It is static: a TAB never starts Python.
It completes subcommands, options and an option's choices, and file names elsewhere.
"""

from __future__ import annotations

import argparse
import re

SHELLS = ("bash", "zsh")


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of `parser`'s program for `shell` (one of SHELLS)."""
    if shell not in SHELLS:
        raise ValueError(f"no completion for {shell!r}: one of {', '.join(SHELLS)}")
    prog = parser.prog
    fn = "_" + re.sub(r"\W", "_", prog)
    subs: dict[str, list[str]] = {}
    opts: dict[str, list[str]] = {}
    choices: dict[str, list[str]] = {}
    _walk(parser, prog, subs, opts, choices)
    lines = [f"# {shell} completion for {prog}: source it, e.g. from ~/.{shell}rc"]
    if shell == "zsh":
        lines += ["autoload -U +X bashcompinit && bashcompinit"]
    lines += [
        f"declare -A {fn}_subs=({_table(subs)})",
        f"declare -A {fn}_opts=({_table(opts)})",
        f"declare -A {fn}_choices=({_table(choices)})",
        f"{fn}() {{",
        f'  local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}" path={prog} i w',
        "  for ((i = 1; i < COMP_CWORD; i++)); do",
        '    w="${COMP_WORDS[i]}"',
        f'    case " ${{{fn}_subs[$path]}} " in *" $w "*) path="$path/$w" ;; esac',
        "  done",
        f'  local options="${{{fn}_choices[$path $prev]}}"',
        '  if [[ -n "$options" ]]; then',
        '    COMPREPLY=($(compgen -W "$options" -- "$cur"))',
        "  elif [[ $cur == -* ]]; then",
        f'    COMPREPLY=($(compgen -W "${{{fn}_opts[$path]}}" -- "$cur"))',
        "  else",
        f'    COMPREPLY=($(compgen -W "${{{fn}_subs[$path]}}" -- "$cur"))',
        '    [[ ${#COMPREPLY[@]} -eq 0 ]] && COMPREPLY=($(compgen -f -- "$cur"))',
        "  fi",
        "}",
        f"complete -o filenames -F {fn} {prog}",
    ]
    return "\n".join(lines) + "\n"


def _walk(
    parser: argparse.ArgumentParser,
    path: str,
    subs: dict[str, list[str]],
    opts: dict[str, list[str]],
    choices: dict[str, list[str]],
) -> None:
    opts[path] = []
    for action in parser._actions:  # argparse keeps its tree only here
        if isinstance(action, argparse._SubParsersAction):
            subs[path] = list(action.choices)
            for name, child in action.choices.items():
                _walk(child, f"{path}/{name}", subs, opts, choices)
            continue
        opts[path] += [o for o in action.option_strings if o.startswith("--")] or action.option_strings
        if action.option_strings and action.choices:
            for option in action.option_strings:
                choices[f"{path} {option}"] = [str(c) for c in action.choices]


def _table(entries: dict[str, list[str]]) -> str:
    return " ".join(f'["{key}"]="{" ".join(words)}"' for key, words in sorted(entries.items()) if words)
