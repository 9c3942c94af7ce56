"""`spear-mm CMD` imports only CMD's module, and `run`'s options are checked before the pipeline (and torch,
transformers) load: a misspelt option is refused at once, in a fresh process, naming the field."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from spear_mm.cli import COMMANDS, build_app


def _fresh_cli(args: list[str], cwd) -> tuple[int, str, set[str]]:
    """Run the CLI in a new interpreter: (exit code, stderr, which heavy libraries it imported)."""
    code = textwrap.dedent(
        f"""
        import sys
        from spear_mm.cli import main
        sys.argv = ["spear-mm", *{args!r}]
        try:
            main()
            rc = 0
        except SystemExit as exc:
            rc = exc.code
        loaded = [m for m in ("torch", "transformers", "spear_mm.pipeline.run") if m in sys.modules]
        print("RESULT", rc, ",".join(loaded), file=sys.stdout)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT"))
    parts = line.split(" ")
    return int(parts[1]), out.stderr, set(filter(None, parts[2].split(","))) if len(parts) > 2 else set()


def test_a_misspelt_planner_flag_is_refused_before_torch_loads(tmp_path):
    rc, err, loaded = _fresh_cli(["run", "b", "a", "--planner-budjet", "3"], tmp_path)
    assert rc == 2 and "--planner-budjet" in err and "--planner-budget" in err
    assert not loaded, f"the run command's option check imported {loaded}"


def test_a_misspelt_planner_key_in_the_config_is_refused_before_torch_loads(tmp_path):
    (tmp_path / "run.yaml").write_text(
        "base: b\nadapted: a\npolicies: [measured]\ndomain_probe: d.txt\nplanner: {budjet: 3}\n"
    )
    rc, err, loaded = _fresh_cli(["run", "--config", "run.yaml"], tmp_path)
    assert rc == 2 and "planner.budjet" in err and "budget" in err
    assert not loaded, f"the run command's config check imported {loaded}"


def test_the_command_map_names_every_registered_command():
    registered = {c.name for c in build_app().registered_commands}
    assert registered == set(COMMANDS)
    for command, module in COMMANDS.items():  # each command's module alone registers it
        assert command in {c.name for c in build_app(command).registered_commands}, module
