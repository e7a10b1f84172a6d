"""Build a dataset of videor4_jax/data/builders/ into ArrayRecord files (no TensorFlow needed):

    python -m videor4_jax.data.build NAME[/CONFIG] --manual_dir DIR --data_dir DIR [--overwrite]

NAME is one of `BUILDERS` (m4_vitevqa, videor4_trajectories, page_sequences, video_mcqa, synthetic_textvideo);
CONFIG one of its configs (default: the builder's first). The files each builder expects in the manual dir are
in its module docstring and in the README's "Data" section; they are checked before anything is written. The
dataset lands in `<data_dir>/<name>/<config>/<version>/` and is read by name
(`--config.data.name=NAME/CONFIG --config.data.data_dir=DIR`, data/sources.py) or by that directory.

Bad records never stop a build: each builder skips them, and the command ends with the per-split counts and the
skipped records by name and reason (all of them in `skipped.jsonl` next to the data). A build is written to a
temporary directory that tfds renames into place when it completes, and removes when it fails: a failed build
leaves nothing that reads as a dataset. `--overwrite` rebuilds an existing one; the old copy is kept aside until
the new one is complete and put back if the build fails.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

from videor4_jax.data.builders import M4Vitevqa, PageSequences, SyntheticTextvideo, VideoMcqa, Videor4Trajectories
from videor4_jax.data.builders import common

BUILDERS = {cls.name: cls for cls in (M4Vitevqa, Videor4Trajectories, PageSequences, VideoMcqa, SyntheticTextvideo)}
MAX_LISTED_SKIPS = 50


class BuildError(Exception):
  """A build that cannot start or did not complete; the message says why and what to do."""


def resolve(spec: str):
  """`NAME[/CONFIG]` -> (builder class, config name or None); BuildError listing the known names / configs."""
  name, _, config = spec.partition("/")
  if name not in BUILDERS:
    raise BuildError(f"unknown dataset {name!r}; known: {', '.join(sorted(BUILDERS))}")
  cls = BUILDERS[name]
  configs = [c.name for c in cls.BUILDER_CONFIGS]
  if config and config not in configs:
    known = ", ".join(configs) if configs else "none (give the name alone)"
    raise BuildError(f"unknown config {config!r} of {name}; its configs: {known}")
  return cls, (config or (configs[0] if configs else None))


def check_manual_dir(cls, config: str | None, manual_dir: str | None) -> dict:
  """The annotation files per split that the build will read; BuildError when the dir or its files are missing."""
  if cls.MANUAL_DOWNLOAD_INSTRUCTIONS is None:
    return {}
  label = cls.name + (f"/{config}" if config else "")
  if not manual_dir:
    raise BuildError(f"{label} needs --manual_dir: {cls.MANUAL_DOWNLOAD_INSTRUCTIONS}")
  if not os.path.isdir(manual_dir):
    raise BuildError(f"--manual_dir {manual_dir} is not a directory")
  try:
    return cls.manual_files(manual_dir, config)
  except common.ManualDirError as e:
    raise BuildError(f"{e}. {cls.MANUAL_DOWNLOAD_INSTRUCTIONS}") from None


def skip_report(version_dir: str, splits: dict[str, int]) -> str:
  """The closing summary: kept records per split, then the skipped ones by name and reason."""
  skipped = common.read_skipped(version_dir)
  lines = [f"built {version_dir}"]
  lines += [f"  {split}: {n} records, {sum(s['split'] == split for s in skipped)} skipped"
            for split, n in splits.items()]
  if skipped:
    lines.append(f"skipped {len(skipped)} record(s) ({os.path.join(version_dir, common.SKIPPED_FILE)}):")
    lines += [f"  {s['split']} {s['key']}: {s['reason']}" for s in skipped[:MAX_LISTED_SKIPS]]
    if len(skipped) > MAX_LISTED_SKIPS:
      lines.append(f"  ... and {len(skipped) - MAX_LISTED_SKIPS} more in {common.SKIPPED_FILE}")
  empty = [split for split, n in splits.items() if n == 0]
  if empty:
    lines.append(f"warning: split(s) {empty} kept no record")
  return "\n".join(lines)


def build(spec: str, data_dir: str, manual_dir: str | None = None, overwrite: bool = False) -> str:
  """Builds `spec` under `data_dir`; returns the closing report. BuildError when it cannot start or fails."""
  import tensorflow_datasets as tfds
  cls, config = resolve(spec)
  files = check_manual_dir(cls, config, manual_dir)
  for split, f in files.items():
    print(f"{split}: {', '.join(f) if isinstance(f, list) else f}")
  builder = cls(config=config, data_dir=data_dir, file_format="array_record")
  target = os.fspath(builder.data_path)
  aside = None
  if os.path.exists(target):
    if not overwrite:
      return f"{target} exists (built before); --overwrite rebuilds it\n" + skip_report(target, _counts(builder))
    aside = os.path.join(os.path.dirname(target), f"replaced.{os.path.basename(target)}")
    shutil.rmtree(aside, ignore_errors=True)
    os.rename(target, aside)
    builder = cls(config=config, data_dir=data_dir, file_format="array_record")
  dl = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  try:
    builder.download_and_prepare(download_config=dl)
  except BaseException as e:
    if aside:                         # tfds removed the partial build; the previous one goes back in place
      os.rename(aside, target)
    if not isinstance(e, (ValueError, OSError)):   # a bug, or an interrupt: the traceback is the report
      raise
    kept = f"the previous build is kept at {target}" if aside else f"nothing was written at {target}"
    raise BuildError(f"building {spec} failed ({kept}): {type(e).__name__}: {e}") from e
  if aside:
    shutil.rmtree(aside)
  return skip_report(target, _counts(builder))


def _counts(builder) -> dict[str, int]:
  return {name: split.num_examples for name, split in builder.info.splits.items()}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m videor4_jax.data.build", description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("name", metavar="NAME[/CONFIG]", help=f"one of {', '.join(sorted(BUILDERS))}")
  parser.add_argument("--data_dir", required=True, help="where the dataset is written (<data_dir>/<name>/...)")
  parser.add_argument("--manual_dir", help="the directory holding the release's files (not for synthetic_textvideo)")
  parser.add_argument("--overwrite", action="store_true", help="rebuild an existing dataset")
  args = parser.parse_args(argv)
  try:
    print(build(args.name, args.data_dir, args.manual_dir, args.overwrite))
  except BuildError as e:
    print(f"\nerror: {e}", file=sys.stderr)   # after any unfinished progress bar line
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
