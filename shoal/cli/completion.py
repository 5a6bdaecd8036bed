"""`shoal completion bash|zsh`: a shell completion script, made from the parser itself.

    source <(shoal completion bash)          # in ~/.bashrc
    source <(shoal completion zsh)           # in ~/.zshrc (uses zsh's bashcompinit)

The script holds, for every command path (`local get`, `proxy-config`, ...),
its subcommands, options and the choices of its arguments, so it completes
without running shoal at each <TAB>.
"""

from __future__ import annotations

import argparse

SHELLS = ("bash", "zsh")


def register(sub) -> None:
    p = sub.add_parser("completion", help="print a shell completion script (bash or zsh)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    p.set_defaults(func=cmd_completion)


def paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], list[str]]:
    """{command path: the words that may follow it} for the whole tree of `parser`."""
    words: list[str] = []
    out: dict[tuple[str, ...], list[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                words.append(name)
                out.update(paths(child, (*prefix, name)))
        elif action.option_strings:
            words.extend(o for o in action.option_strings if o.startswith("--") or len(action.option_strings) == 1)
            if action.choices:   # the values of an option follow the option itself
                for option in action.option_strings:
                    out[(*prefix, option)] = sorted(str(c) for c in action.choices)
        elif action.choices:
            words.extend(str(c) for c in action.choices)
    out[prefix] = sorted(dict.fromkeys(words))
    return out


def bash_script(parser: argparse.ArgumentParser) -> str:
    table = paths(parser)
    known = " | ".join(f'"{" ".join(p)}"' for p in sorted(table) if p and not p[-1].startswith("-"))
    cases = "\n".join(f'        "{" ".join(p)}") words="{" ".join(w)}" ;;' for p, w in sorted(table.items()))
    return f"""# shoal completion for bash; made by `shoal completion bash`
_shoal() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" path="" word i words=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        [[ "$word" == -* ]] && continue
        case "$path${{path:+ }}$word" in
            {known}) path="$path${{path:+ }}$word" ;;
        esac
    done
    # after an option that takes one of a few values, those values; else what may follow the command path
    case "$path${{path:+ }}${{COMP_WORDS[COMP_CWORD-1]}}" in
{cases}
        *) case "$path" in
{cases}
           esac ;;
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -F _shoal shoal
"""


def zsh_script(parser: argparse.ArgumentParser) -> str:
    return ("# shoal completion for zsh; made by `shoal completion zsh`\n"
            "autoload -U +X bashcompinit && bashcompinit\n" + bash_script(parser).split("\n", 1)[1])


def cmd_completion(args) -> int:
    from shoal.cli import build_parser

    parser = build_parser()
    print(bash_script(parser) if args.shell == "bash" else zsh_script(parser), end="")
    return 0
