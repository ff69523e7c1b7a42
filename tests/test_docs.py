"""The documentation: the MkDocs site builds with --strict (broken links and anchors fail it),
README.md stays short and its links resolve, and every shell command the pages show is run by
a test (COMMAND_TESTS) or is listed, with the reason, as run by none (NOT_RUN)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from _docs_helpers import DOCS, REPO_ROOT, headings, page_path, read_page

README_MAX_LINES = 220
SHELL_LANGUAGES = ("bash", "sh", "shell", "console")

# Which test runs each command of README.md and docs/*.md, and how. A key is a whole command
# (whitespace normalised, trailing comment dropped) or, ending in "*", a prefix of commands;
# where several keys match, the longest one counts.
# "as written": the test reads the command from its page and runs it, with a tiny budget or
# local paths (the shared data sets, a temporary OUTPUT_DIR) where said.
COMMAND_TESTS: dict[str, tuple[str, str]] = {
    "./run main": (
        "tests/test_synthetic.py::test_readme_main_command_end_to_end",
        "as written, tiny budget appended"),
    "./run test": (
        "tests/test_install_routes.py::test_run_test_one_route_shows_the_detectron2_build",
        "on one route with --collect-only (under ./run test only); CI, .ci/run, is exactly it"),
    "RETINANET_EXT_TEST_ROUTES=default ./run test tests/test_compat.py": (
        "tests/test_install_routes.py::test_run_test_one_route_shows_the_detectron2_build",
        "on the route this suite runs on, with --collect-only (under ./run test only)"),
    "RETINANET_EXT_DETECTRON2_WHEEL=dist/detectron2-0.6-cp311-cp311-linux_x86_64.whl "
    "./run install": (
        "tests/test_install_routes.py::test_readme_wheel_install_commands_on_the_wheel_route",
        "with the wheel route's wheel (under ./run test's wheel route only)"),
    "python tools/install_detectron2.py --wheel "
    "dist/detectron2-0.6-cp311-cp311-linux_x86_64.whl": (
        "tests/test_install_routes.py::test_readme_wheel_install_commands_on_the_wheel_route",
        "with the wheel route's wheel (under ./run test's wheel route only)"),
    "python train_net.py --config-file configs/retinanet_R101_FPN.yaml": (
        "tests/test_engine_setup.py::test_train_net_fails_at_start_without_writing",
        "as written without COCO: it stops at start naming the missing path"),
    "python train_net.py --config-file configs/retinanet_R101_FPN.yaml --resume": (
        "tests/test_engine_setup.py::test_train_net_fails_at_start_without_writing",
        "as written without COCO: it stops at start naming the missing path"),
    "python train_net.py --config-file configs/retinanet_R101_FPN.yaml --eval-only "
    "MODEL.WEIGHTS output/model_final.pth": (
        "tests/test_engine_setup.py::test_train_net_fails_at_start_without_writing",
        "as written without COCO: it stops at start naming the missing path"),
    "python tools/kill_soak.py": (
        "tests/test_soak_kill.py::test_kill_soak_three_kills",
        "as written, one round of 3 kills appended"),
    "python tools/fuzz_datasets.py": (
        "tests/test_fuzz_datasets.py::test_readme_fuzz_command_runs",
        "as written, --cases 3 appended"),
    "python benchmarks/bench_coco_eval.py": (
        "tests/test_evaluation_bench.py::test_bench_coco_eval_writes_its_table",
        "the script on 60 images, 5 classes"),
    "python train_net.py --config-file configs/retinanet_R18_FPN_quick.yaml *": (
        "tests/test_data_readme.py::test_readme_your_own_data_commands",
        "as written (--check-data; training with a tiny budget)"),
    "retinanet-ext analyze-anchors *": (
        "tests/test_data_readme.py::test_readme_your_own_data_commands", "as written"),
    "retinanet-ext show-data *": (
        "tests/test_data_readme.py::test_readme_your_own_data_commands", "as written"),
    "python train_net.py --config-file configs/recipes/small_data_R18_FPN.yaml *": (
        "tests/test_recipe_readme.py::test_readme_recipe_and_precision_accuracy_commands",
        "as written, tiny budget appended"),
    "./run python benchmarks/bench_recipe.py *": (
        "tests/test_benchmarks.py::test_bench_recipe_budgeted_arms_smoke",
        "the script on a 3-second budget, one seed, each arm in turn"),
    "retinanet-ext sweep --config-file configs/recipes/small_data_R18_FPN.yaml *": (
        "tests/test_sweep.py::test_readme_recipe_ablation_command_plans",
        "as written with --dry-run (every variant's config checked, nothing trained)"),
    "python train_net.py --config-file configs/retinanet_R18_FPN_quick.yaml --dataset "
    "bccd_train=voc:../shared/datasets/bccd/BCCD:train DATASETS.TEST \"()\" "
    "OUTPUT_DIR output/bccd": (
        "tests/test_cli_readme.py::test_readme_use_the_model_commands",
        "as written, tiny budget appended"),
    "retinanet-ext predict *": (
        "tests/test_cli_readme.py::test_readme_use_the_model_commands", "as written"),
    "retinanet-ext predict --config-file configs/retinanet_R18_FPN_quick.yaml MODEL.WEIGHTS "
    "output/bccd/model_final.pth --input \"../shared/datasets/bccd/BCCD/JPEGImages/"
    "BloodImage_0002*.jpg\" --output output/bccd/to_label *": (
        "tests/test_save_labels.py::test_docs_labelling_loop_commands",
        "as written, on a tiny checkpoint (its architecture's options appended)"),
    "python train_net.py --config-file configs/retinanet_R18_FPN_quick.yaml --dataset "
    "bccd_more=cvat:*": (
        "tests/test_save_labels.py::test_docs_labelling_loop_commands",
        "as written on the files predict has just written, tiny budget appended"),
    "retinanet-ext export *": (
        "tests/test_cli_readme.py::test_readme_use_the_model_commands", "as written"),
    "retinanet-ext plot output/bccd *": (
        "tests/test_cli_readme.py::test_readme_use_the_model_commands", "as written"),
    "python train_net.py --config-file configs/finetune/*": (
        "tests/test_finetune.py::test_readme_finetune_commands",
        "as written, one iteration; MODEL.WEIGHTS a local file of the downloaded one's format"),
    "retinanet-ext convert-weights *": (
        "tests/test_finetune.py::test_readme_finetune_commands",
        "as written, on a torchvision ResNet-50 state dict made locally"),
    "retinanet-ext sweep --config-file configs/retinanet_R18_FPN_quick.yaml *": (
        "tests/test_sweep.py::test_readme_sweep_and_plot_focal_commands",
        "as written, two iterations at 64 px appended"),
    "retinanet-ext plot-focal *": (
        "tests/test_sweep.py::test_readme_sweep_and_plot_focal_commands", "as written"),
    "./run python benchmarks/bench_cli.py*": (
        "tests/test_cli_fast.py::test_bench_cli_writes_its_table", "the script, one repeat"),
    "./run python benchmarks/bench_model.py*": (
        "tests/test_benchmarks.py::test_bench_model_writes_its_table",
        "the script at 128x160, one repeat"),
    "./run python benchmarks/bench_bccd.py *": (
        "tests/test_benchmarks.py::test_bench_bccd_two_seeds_summary",
        "the script, 6 iterations, 2 seeds"),
    "./run python benchmarks/precision_accuracy.py --demo *": (
        "tests/test_benchmarks.py::test_precision_accuracy_writes_its_table",
        "the script with --demo on an untrained model's weights"),
    "R=output/bccd_precision_sweep/runs/PRECISION=float32__a77c71/seed2": (
        "tests/test_recipe_readme.py::test_readme_recipe_and_precision_accuracy_commands",
        "$R is the run the test has just trained"),
    "./run python benchmarks/precision_accuracy.py --config-file $R/config.yaml *": (
        "tests/test_recipe_readme.py::test_readme_recipe_and_precision_accuracy_commands",
        "as written on that run (OpenVINO runtimes where the extra is installed)"),
    "./run python benchmarks/bench_runtime.py --repeats 7 --variants channels_last --int8": (
        "tests/test_export.py::test_bench_runtime_smoke",
        "the script at 96x128, ResNet-18, one repeat"),
    "./run python benchmarks/bench_runtime.py --repeats 7 --variants channels_last --int8 "
    "--isa avx2 *": (
        "tests/test_export.py::test_bench_runtime_avx2_emulation_smoke",
        "the script with --isa avx2 at 96x128, one repeat"),
    "./run python benchmarks/bench_formats.py": (
        "tests/test_formats_labeltools.py::test_bench_formats_writes_its_table",
        "the script on 12 images, one repeat"),
    "python benchmarks/bench_gpu.py": (
        "tests/test_benchmarks.py::test_bench_gpu_refuses_without_cuda_and_its_models_survive_float16",
        "as written on a CPU-only machine: it refuses, saying it needs CUDA"),
    "./run python -m mkdocs build --strict": (
        "tests/test_docs.py::test_mkdocs_build_strict",
        "as written, --site-dir a temporary folder"),
}

# Commands no test runs, and why. The closest test is named where one runs the same code.
NOT_RUN: dict[str, str] = {
    "RETINANET_EXT_DETECTRON2_ROUTE=source ./run install":
        "needs GitHub (the source route); the test machines cannot reach it",
    "pip install --no-build-isolation "
    "'git+https://github.com/facebookresearch/detectron2.git'":
        "needs GitHub and an environment of the user's own with a CUDA torch",
    "pip install -e .":
        "into the user's own environment; ./run's install runs the same "
        "(pip install --no-deps --no-build-isolation -e .)",
    "python train_net.py --config-file configs/retinanet_R101_FPN.yaml --num-gpus 8":
        "needs 8 GPUs and COCO; --num-gpus 2 on CPU: "
        "tests/test_train_net.py::test_two_cpu_processes_train_over_gloo",
}


def _strip_comment(line: str) -> str:
    """``line`` without a trailing shell comment: a ``#`` starting a word outside quotes."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index]
    return line


def shell_commands(text: str) -> list[str]:
    """The commands in the shell blocks of a Markdown text. The rule: in each fenced block
    whose language is bash, sh, shell or console, a line ending in a backslash is joined with
    the next; every line then left is one command, its trailing comment removed, its
    whitespace normalised; blank and comment-only lines are none. In console blocks only the
    lines after a ``$ `` prompt are commands (the rest is output)."""
    commands, block, language = [], None, ""
    for line in text.splitlines():
        fence = re.match(r"\s*```\s*([\w+-]*)", line)
        if fence and block is None:
            block, language = [], fence.group(1)
        elif fence:
            if language in SHELL_LANGUAGES:
                for command in "\n".join(block).replace("\\\n", " ").splitlines():
                    if language == "console":
                        if not command.startswith("$ "):
                            continue
                        command = command[2:]
                    command = " ".join(_strip_comment(command).split())
                    if command:
                        commands.append(command)
            block = None
        elif block is not None:
            block.append(line)
    return commands


def documented_pages() -> list[str]:
    return ["README.md", *sorted(p.name for p in DOCS.glob("*.md"))]


def matching_keys(command: str, table: dict) -> list[str]:
    return [key for key in table
            if key == command or (key.endswith("*") and command.startswith(key[:-1]))]


def test_shell_command_rule() -> None:
    text = ("```bash\nfoo --a 'x # y' \\\n  --b  # why\n# only a comment\n\nbar\n```\n"
            "```python\nnot_a_command()\n```\n```console\n$ baz -q\noutput line\n```\n")
    assert shell_commands(text) == ["foo --a 'x # y' --b", "bar", "baz -q"]


def test_every_documented_command_is_run_by_a_test() -> None:
    found = {(page, command) for page in documented_pages()
             for command in shell_commands(read_page(page))}
    assert len(found) > 30
    rows, unmapped = [], []
    for page, command in sorted(found):
        tests = matching_keys(command, COMMAND_TESTS)
        skipped = matching_keys(command, NOT_RUN)
        if tests:
            nodeid, how = COMMAND_TESTS[max(tests, key=len)]
            rows.append((page, command, nodeid, how))
        elif skipped:
            rows.append((page, command, "(no test)", NOT_RUN[skipped[0]]))
        else:
            unmapped.append(f"{page}: {command}")
    print("\ncommand | page | test | how")
    for page, command, nodeid, how in rows:
        print(f"{command} | {page} | {nodeid} | {how}")
    assert not unmapped, "commands with no entry in COMMAND_TESTS or NOT_RUN:\n" + "\n".join(
        unmapped)
    commands = {command for _, command in found}
    for table in (COMMAND_TESTS, NOT_RUN):
        stale = [key for key in table if not any(matching_keys(c, {key: None}) for c in commands)]
        assert not stale, f"entries that match no documented command: {stale}"


@pytest.mark.parametrize("nodeid", sorted({nodeid for nodeid, _ in COMMAND_TESTS.values()}))
def test_mapped_test_exists(nodeid: str) -> None:
    path, function = nodeid.split("::")
    source = (REPO_ROOT / path).read_text()
    assert re.search(rf"^def {re.escape(function)}\(", source, re.M), nodeid


def test_readme_commands_are_the_pages_commands() -> None:
    """README repeats a few commands of the pages; the tests run the pages' copies."""
    in_docs = {command for page in documented_pages()[1:]
               for command in shell_commands(read_page(page))}
    missing = [c for c in shell_commands(read_page("README.md")) if c not in in_docs]
    assert not missing, f"README commands not in any docs/ page: {missing}"


def test_readme_is_short() -> None:
    lines = len(read_page("README.md").splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines, more than {README_MAX_LINES}: move the detail to docs/")


def slug(title: str) -> str:
    """The anchor MkDocs (Python-Markdown's toc) gives a heading: markup and punctuation
    removed, lower case, spaces to hyphens."""
    text = re.sub(r"[`*_]|<[^>]+>", "", re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title))
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text).strip().lower())


def test_readme_links_to_docs_resolve() -> None:
    links = re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", read_page("README.md"))
    relative = [link for link in links if not re.match(r"[a-z]+:|#", link)]
    assert any(link.startswith("docs/") for link in relative)
    for link in relative:
        target, _, anchor = link.partition("#")
        path = REPO_ROOT / target
        assert path.is_file(), f"README.md links to {link}: no such file"
        if anchor:
            anchors = {slug(title) for _, _, title in headings(path.read_text())}
            assert anchor in anchors, f"README.md links to {link}: no such heading in {target}"


@pytest.mark.once
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    """The site builds with --strict: every page in the nav, no broken link or anchor."""
    try:
        import material  # noqa: F401
        import mkdocs  # noqa: F401
    except ImportError as error:
        pytest.fail(f"{error}: install the test tools, pip install -r requirements/test.txt")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for page in documented_pages()[1:]:
        assert (tmp_path / page_path(page).stem / "index.html").is_file() or page == "index.md"
    assert (tmp_path / "index.html").is_file()
