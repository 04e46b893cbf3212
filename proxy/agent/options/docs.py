"""The reference tables of docs/deploy.md (flags and config fields), generated from the
tables in flags.py and fields.py: ``python -m proxy.agent.options.docs`` prints them."""

from __future__ import annotations

from proxy.agent.options.fields import IGNORED_FIELDS, SUPPORTED_FIELDS
from proxy.agent.options.flags import IGNORED_FLAGS, REJECTED_FLAGS, SUPPORTED_FLAGS, FlagSpec


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _defaults_cell(defaults: tuple[str, ...], none: str = "") -> str:
    shown = [f"`{d}`" if d else '`""`' for d in defaults]
    return " or ".join(shown) if shown else none


def _flag_names(spec: FlagSpec) -> str:
    return ", ".join(f"`{name}`" for name in spec.option_strings)


def _with_config_cell(spec: FlagSpec) -> str:
    if spec.with_config:
        return "applies"
    return "ignored; set " + " or ".join(f"`{f}`" for f in spec.field.split(" / "))


def reference_tables_markdown() -> str:
    """The flag and field tables of docs/deploy.md, generated from the tables."""
    lines = [
        "#### Flags kube-proxy-py implements",
        "",
        "| flag | meaning | with `--config` |",
        "|---|---|---|",
        *(
            f"| {_flag_names(s)} | {_cell(s.note)} | {_with_config_cell(s)} |"
            for s in SUPPORTED_FLAGS
        ),
        "",
        "#### Upstream flags accepted and ignored (a warning unless set to the default)",
        "",
        "| flag | upstream default (no warning) | why ignored |",
        "|---|---|---|",
        *(
            f"| `{s.name}` | {_defaults_cell(s.defaults)} | {_cell(s.note)} |"
            for s in IGNORED_FLAGS
        ),
        "",
        "#### Upstream flags refused (exit status 2)",
        "",
        "| flag | why |",
        "|---|---|",
        *(f"| `{s.name}` | {_cell(s.note)} |" for s in REJECTED_FLAGS),
        "",
        "#### Config fields kube-proxy-py implements",
        "",
        "| field | type | default | meaning |",
        "|---|---|---|---|",
        *(
            f"| `{f.path}` | {f.kind.value} | {_defaults_cell(f.defaults, 'unset')} | "
            f"{_cell(f.note)} |"
            for f in SUPPORTED_FIELDS
        ),
        "",
        "#### Config fields accepted and ignored (a warning unless null, zero or the default)",
        "",
        "| field | type | upstream default (no warning) | why ignored |",
        "|---|---|---|---|",
        *(
            f"| `{f.path}` | {f.kind.value} | "
            f"{_unset_or(f.defaults, 'null' if f.pointer else 'null, zero or empty')} | "
            f"{_cell(f.note)} |"
            for f in IGNORED_FIELDS
        ),
    ]
    return "\n".join(lines) + "\n"


def _unset_or(defaults: tuple[str, ...], unset: str) -> str:
    return unset + (f" or {_defaults_cell(defaults)}" if defaults else "")


if __name__ == "__main__":
    print(reference_tables_markdown(), end="")
