"""Hydra's config search path as msam's tools see it: msam's own tree (msam.paths.CONF_DIR) first,
then the user's folders.

A user keeps their own experiments, models, data sets, tables and launchers in a folder of their
own and adds it the two ways Hydra documents:

    msam-train --config-dir ./conf experiment=mine
    msam-train hydra.searchpath=[file://./conf,pkg://my_project.conf] experiment=mine

The tools check a command line before Hydra runs it (msam.cli.preflight). Those checks must see
the same search path as the run itself, so this module builds it as hydra.main does: Hydra's own
configs, msam's tree, `--config-dir` (inserted before Hydra's structured-config schema, as Hydra
inserts it), then the `hydra.searchpath` entries (Hydra's config loader appends them when it reads
the overrides or the primary config). Hydra resolves a name to the first folder that has it, so
a file of the user's with the name of one of msam's (model/resnet18.yaml) is shadowed by msam's.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from msam.errors import ConfigError
from msam.paths import CONF_DIR

SWEEP_FLAGS = ("-m", "--multirun")
# Hydra's options that choose where configs come from: the preflight follows them.
CONFIG_DIR_FLAGS = ("--config-dir", "-cd")
CONFIG_NAME_FLAGS = ("--config-name", "-cn")


@dataclass
class CommandLine:
    args: list[str]              # the overrides, and -m for a sweep
    config_name: str             # the primary config: the tool's own, or --config-name
    config_dir: Path | None      # --config-dir, absolute
    hydra_answers: bool = False  # --help, --cfg job, --info, ...: Hydra answers them, nothing is checked


def flag_value(argv: list[str], i: int, flag: str) -> tuple[str, int]:
    """The value of `flag VALUE` or `flag=VALUE` at argv[i], and the index after it."""
    if "=" in argv[i]:
        return argv[i].split("=", 1)[1], i + 1
    if i + 1 >= len(argv) or not argv[i + 1]:
        raise ConfigError(f"{flag} needs a value")
    return argv[i + 1], i + 2


def parse_command_line(argv: list[str], config_name: str) -> CommandLine:
    """Split a tool's command line into Hydra's options and the overrides."""
    command = CommandLine(args=[], config_name=config_name, config_dir=None)
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag = arg.split("=", 1)[0]
        if flag in CONFIG_DIR_FLAGS:
            value, i = flag_value(argv, i, flag)
            folder = Path(os.path.abspath(os.path.expanduser(value)))
            if not folder.is_dir():
                raise ConfigError(f"{flag} {value}: no such folder (give the folder that holds your experiment/, "
                                  "model/, dataset/ ... folders)")
            command.config_dir = folder
        elif flag in CONFIG_NAME_FLAGS:
            command.config_name, i = flag_value(argv, i, flag)
        elif arg in SWEEP_FLAGS or not arg.startswith("-"):
            command.args.append(arg)
            i += 1
        else:
            command.hydra_answers = True
            command.args.append(arg)
            i += 1
    return command


@contextmanager
def hydra_initialised(config_dir: Path | None):
    """Hydra's global state as hydra.main sets it up for a tool (msam's tree, then config_dir), for
    compose() and the config loader; the previous state is restored afterwards. Hydra's public
    initialize_config_dir takes one folder only: this is it with Hydra's --config-dir step added."""
    from hydra import version
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    backup = get_gh_backup()
    version.setbase("1.3")
    search_path = create_config_search_path(search_path_dir=str(CONF_DIR))
    if config_dir is not None:
        search_path.prepend(provider="command-line", path=f"file://{config_dir}",
                            anchor=SearchPathQuery(provider="schema"))
    Hydra.create_main_hydra2(task_name="msam", config_search_path=search_path)
    try:
        yield
    finally:
        restore_gh_from_backup(backup)


def check_searchpath_folders(overrides: list[str]) -> None:
    """A `file://` entry of hydra.searchpath that is not a folder is one line (Hydra warns over two
    lines, then cannot find the user's names)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in OverridesParser.create().parse_overrides(searchpath_overrides(overrides)):
        entries = override.value()
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, str) and entry.startswith("file://") and not Path(entry[7:]).expanduser().is_dir():
                raise ConfigError(f"hydra.searchpath entry {entry}: no such folder")


def searchpath_overrides(overrides: list[str]) -> list[str]:
    return [o for o in overrides if o.split("=", 1)[0] == "hydra.searchpath"]


def group_options(group: str, config_name: str | None, overrides: list[str]) -> list[str]:
    """The options of a config group over the whole search path (msam's and the user's folders),
    inside hydra_initialised or a running Hydra app."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    return sorted(set(loader.get_group_options(group, config_name=config_name,
                                               overrides=searchpath_overrides(overrides))))


def quoted(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def running_app_searchpath() -> list[str]:
    """Inside a running tool: the `hydra.searchpath` override that reproduces the run's user
    folders (--config-dir is already part of the running app's search path)."""
    from hydra.core.hydra_config import HydraConfig

    entries = list(HydraConfig.get().searchpath) if HydraConfig.initialized() else []
    return [f"hydra.searchpath=[{','.join(quoted(str(e)) for e in entries)}]"] if entries else []


def compose_group(group: str, name: str, overrides: list[str]):
    """One option of a group (model=<name>) on its own, as {group: {...}}, its interpolations left
    unresolved, from the running app's search path; a name no folder has is one ConfigError line
    listing the valid ones."""
    from hydra import compose

    valid = group_options(group, None, overrides)
    if name not in valid:
        raise ConfigError(f"unknown {group} '{name}'; valid: {', '.join(valid)}")
    return compose(config_name=None, overrides=[*overrides, f"+{group}={name}"])


def group_config(group: str, name: str):
    """One option of a group, as {group: {...}}: inside a running tool from its search path (its
    --config-dir and hydra.searchpath folders), elsewhere (a script, a test) from msam's tree."""
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose_group(group, name, running_app_searchpath())
    with hydra_initialised(None):
        return compose_group(group, name, [])
