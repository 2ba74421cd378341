# -*- coding: utf-8 -*-
"""
Config files are data everywhere (issue 25), through the entry points a user runs, in this
process: tools/lazyconfig_train_net.py, tools/run_d2_tool.py (Detectron2's own scripts, which read
yacs files with allow_unsafe=True and LazyConfig .yaml files with yaml.unsafe_load) and
panet_d2.model_zoo. A Python tag that opens a marker file shows code that ran: no marker may be
left. YAML aliases that stand for more than 10,000 values, or sit inside the value they refer to,
are refused before they are expanded, and Detectron2's own dump of a config (which aliases) loads
back; a LazyConfig syntax error is one line
"file:line"; run_d2_tool.py runs Detectron2's scripts by name only; model_zoo resolves configs
inside configs/ only; Detectron2's lazyconfig_train_net.py runs the project's quick LazyConfig
through run_d2_tool.py (issue 27).
"""

import os

import pytest
import yaml

from detectron2.config import LazyConfig

import panet_d2.model_zoo.model_zoo as zoo_module
from panet_d2 import model_zoo
from panet_d2.config import load_config_file
from panet_d2.errors import ConfigError

from .common import CONFIG_DIR, ROOT, error_exit, load_script, synthetic_datasets

pytestmark = pytest.mark.usefixtures("single_thread")

d2_tools = load_script("tools/d2_tools.py", "panet_d2_tools_finder_data")
QUICK_LAZY = os.path.join(CONFIG_DIR, "quick_schedules", "panet_R_18_synth_lazy.py")


@pytest.fixture(scope="module")
def run_d2_tool():
    return load_script("tools/run_d2_tool.py", "panet_run_d2_tool_data")


@pytest.fixture(scope="module")
def launcher():
    return load_script("tools/lazyconfig_train_net.py", "panet_lazyconfig_launcher_data")


def _require(tool):
    path = d2_tools.find_detectron2_file(d2_tools.tool_relpath(tool))
    if path is None:
        pytest.skip("Detectron2's {} is not installed".format(tool))
    return path


def _tag(marker):
    """A YAML value that creates ``marker`` when a loader runs Python tags."""
    return "!!python/object/apply:builtins.open [{!r}, 'w']".format(str(marker))


def _alias_bomb(levels=6):
    """Nested aliases: ``levels`` levels of lists of 6 stand for 6**levels values (46656 here,
    expanded by an unchecked loader in seconds; 9 levels of 9 grew Detectron2's LazyConfig
    loader past 6 GB in 10 minutes)."""
    lines = ["a0: &a0 [x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append("a{}: &a{} [{}]".format(i, i, ", ".join(["*a{}".format(i - 1)] * 6)))
    return "\n".join(lines) + "\n"


@pytest.fixture
def files(tmp_path):
    """Hostile and broken config files, and the marker a Python tag in them would create."""
    marker = tmp_path / "MARKER"
    f = {"marker": marker}

    def write(name, text):
        f[name] = tmp_path / name
        f[name].write_text(text)

    write("lazy_tag.yaml", "train:\n  output_dir: {}\n".format(_tag(marker)))
    write("lazy_alias.yaml", "train: {{output_dir: {}}}\n".format(tmp_path / "out") + _alias_bomb())
    write(
        "lazy_loads_tag.py",
        'from detectron2.config import LazyConfig\ntrain = LazyConfig.load_rel("lazy_tag.yaml")\n',
    )
    write("syntax.py", "train = dict(\n    output_dir='out',\n  max_iter=(\n")
    write("base_syntax.py", "train = dict(output_dir=[)\n")
    write("imports_syntax.py", "from .base_syntax import train\n")
    write("yacs_tag.yaml", "MODEL:\n  DEVICE: {}\n".format(_tag(marker)))
    write("yacs_alias.yaml", "MODEL:\n  PIXEL_MEAN: [1, 2, 3]\n" + _alias_bomb())
    write("yacs_base_tag.yaml", "_BASE_: yacs_tag.yaml\n")
    write("runs_code.py", "open({!r}, 'w').close()\n".format(str(marker)))
    return f


# 1. + 5. tools/lazyconfig_train_net.py ------------------------------------------------------


def test_lazyconfig_yaml_with_a_python_tag_is_refused(launcher, files):
    _require("lazyconfig_train_net")
    for name in ("lazy_tag.yaml", "lazy_loads_tag.py"):  # the file itself, or one it loads
        line = error_exit(launcher.main, ["--config-file", str(files[name])])
        assert "Config file {!r} holds a Python tag".format(str(files["lazy_tag.yaml"])) in line
        assert not files["marker"].exists(), "the tag ran: " + line


def test_lazyconfig_yaml_alias_is_refused_before_expanding(launcher, files):
    _require("lazyconfig_train_net")
    line = error_exit(launcher.main, ["--config-file", str(files["lazy_alias.yaml"])])
    assert line.startswith(
        "ERROR: Config file {!r} uses YAML aliases (*a0, line 3) that stand for ".format(
            str(files["lazy_alias.yaml"])
        )
    )
    assert line.endswith("(at most 10000): config files are plain data, write the values out.")


def test_lazyconfig_syntax_error_is_file_and_line(launcher, files):
    _require("lazyconfig_train_net")
    line = error_exit(launcher.main, ["--config-file", str(files["syntax.py"])])
    assert line.startswith("ERROR: Config file {}:3: SyntaxError: ".format(files["syntax.py"]))
    # in a file that the config imports: that file and its line
    line = error_exit(launcher.main, ["--config-file", str(files["imports_syntax.py"])])
    assert line.startswith("ERROR: Config file {}:1: SyntaxError: ".format(files["base_syntax.py"]))


def test_project_loader_reads_lazyconfig_yaml_as_data(files):
    """load_config_file (train_net.py, demo.py, model_zoo): a LazyConfig that loads a YAML file
    with a tag is refused; LazyConfig.load is Detectron2's own again afterwards."""
    before = LazyConfig.__dict__["load"]
    with pytest.raises(ConfigError, match="holds a Python tag"):
        load_config_file(str(files["lazy_loads_tag.py"]))
    assert LazyConfig.__dict__["load"] is before and not files["marker"].exists()


def test_detectron2s_config_dump_with_aliases_loads_back(tmp_path):
    """OUTPUT_DIR/config.yaml as Detectron2 writes it (CfgNode.dump: the default BBOX_REG_WEIGHTS
    aliased) is what users pass back to --eval-only, the demo and the export tool."""
    cfg = load_config_file(
        os.path.join(CONFIG_DIR, "quick_schedules", "panoptic_panet_R_18_synth.yaml")
    )
    dumped = tmp_path / "config.yaml"
    dumped.write_text(cfg.dump())
    assert "*id001" in dumped.read_text()  # the premise: Detectron2's dump uses an alias
    loaded = load_config_file(str(dumped))
    assert yaml.safe_load(loaded.dump()) == yaml.safe_load(cfg.dump())  # nested tuples: lists


def test_alias_inside_its_own_value_is_refused(tmp_path):
    path = tmp_path / "recursive.yaml"
    path.write_text("MODEL:\n  DEVICE: cpu\n  PIXEL_MEAN: &m [1.0, 2.0, *m]\n")
    with pytest.raises(ConfigError) as e:
        load_config_file(str(path))
    assert str(e.value) == (
        "Config file {!r} uses a YAML alias inside the value it refers to (the value at line 3): "
        "config files are plain data, write the value out.".format(str(path))
    )


# 2. tools/run_d2_tool.py: Detectron2's yacs tools ---------------------------------------------


@pytest.mark.parametrize("tool", ["analyze_model", "train_net"])
def test_detectron2_tools_read_yacs_files_as_data(run_d2_tool, files, tmp_path, tool):
    _require(tool)
    argv = [tool, "--config-file"]
    extra = ["--tasks", "parameter"] if tool == "analyze_model" else ["OUTPUT_DIR", str(tmp_path)]
    for name in ("yacs_tag.yaml", "yacs_base_tag.yaml"):
        line = error_exit(run_d2_tool.main, argv + [str(files[name])] + extra)
        assert "holds a Python tag" in line and repr(str(files["yacs_tag.yaml"])) in line
        assert not files["marker"].exists(), "the tag ran: " + line
    line = error_exit(run_d2_tool.main, argv + [str(files["yacs_alias.yaml"])] + extra)
    assert (
        "Config file {!r} uses YAML aliases (*a0, line 4)".format(str(files["yacs_alias.yaml"]))
        in line
    )


# 3. tools/run_d2_tool.py: Detectron2's scripts only, by name -----------------------------------


def test_run_d2_tool_runs_only_named_detectron2_scripts(run_d2_tool, files, tmp_path):
    script = str(files["runs_code.py"])
    elsewhere = os.path.relpath(script, os.path.join(ROOT, "tools"))[: -len(".py")]
    for tool in (elsewhere, script, "./analyze_model", "../tools/analyze_model", "tools/../x"):
        line = error_exit(run_d2_tool.main, [tool])
        assert line.startswith("ERROR: {!r} is not a name of Detectron2's tools".format(tool))
        assert line.endswith("(--list).")
        assert not files["marker"].exists()
    # the names allowed are listed (those of --list), here of a given checkout
    d2 = tmp_path / "d2"
    (d2 / "tools").mkdir(parents=True)
    (d2 / "tools" / "mine.py").write_text("")
    line = error_exit(run_d2_tool.main, ["--d2-root", str(d2), "../" + elsewhere])
    assert "Found: mine (--list)." in line and not files["marker"].exists()


# 4. panet_d2.model_zoo: configs/ only -----------------------------------------------------------


def test_model_zoo_resolves_names_inside_configs_only(files, tmp_path, monkeypatch):
    script = str(files["runs_code.py"])
    outside = os.path.relpath(script, CONFIG_DIR)
    for path in (script, outside, "quick_schedules/../../" + outside, "README.md"):
        for call in (model_zoo.get_config, model_zoo.get_config_file):
            with pytest.raises(ConfigError, match="relative to PANet's configs/ directory") as e:
                call(path)
            assert repr(path) in str(e.value) and "\n" not in str(e.value)
    assert not files["marker"].exists()
    # a link inside configs/ that leads out of it
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / zoo_module._MARKER).write_text("MODEL: {}\n")
    (configs / "link.py").symlink_to(script)
    monkeypatch.setattr(zoo_module, "_PACKAGE_CONFIG_DIR", str(configs))
    monkeypatch.setattr(zoo_module, "_SOURCE_CONFIG_DIR", str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="'link.py' leads to .*runs_code.py"):
        model_zoo.get_config("link.py")
    assert not files["marker"].exists()
    assert model_zoo.get_config_file(zoo_module._MARKER) == str(configs / zoo_module._MARKER)


# 6. Detectron2's lazyconfig_train_net.py on the project's LazyConfig (issue 27) ----------------


@pytest.fixture(scope="module")
def tiny_datasets(tmp_path_factory):
    splits = {"train": {"num_images": 2, "seed": 1}, "val": {"num_images": 2, "seed": 2}}
    with synthetic_datasets(tmp_path_factory, "test_cfg_data", splits) as root:
        yield root


def test_run_d2_tool_lazyconfig_train_net(run_d2_tool, tiny_datasets, tmp_path):
    """run_d2_tool.py lazyconfig_train_net on the quick LazyConfig: Detectron2's setup reads
    train.output_dir (no OUTPUT_DIR), one iteration, evaluation, the project's log there too."""
    _require("lazyconfig_train_net")
    out = tmp_path / "out"
    opts = [
        "train.max_iter=1",
        "dataloader.train.total_batch_size=1",
        "train.output_dir=" + str(out),
    ]
    opts += ["dataloader.train.dataset.names=test_cfg_data_train"]
    opts += ["dataloader.test.dataset.names=test_cfg_data_val"]
    run_d2_tool.main(["lazyconfig_train_net", "--config-file", QUICK_LAZY] + opts)
    assert {"model_final.pth", "log.txt", "metrics.json", "last_checkpoint"} <= set(os.listdir(out))
    with open(out / "log.txt") as f:
        log = f.read()
    assert "Starting training from iteration 0" in log and "copypaste: Task: segm" in log
