"""Where a run's inputs come from, before any of them is read.

Modules, in data-flow order:

- `hub`: `ORG/NAME[@REVISION]` ids for models (`--model`, `--ref-model`, a sweep's MODELs, the
  in-process judge) and datasets (`--data`): a local directory of that name first, else the
  Hugging Face hub cache, else a download of only the files a run reads (no pickle without
  --allow-pickle, no code without --trust-remote-code); each id pinned to one commit per run;
- `hub_files`: which files of a hub repo a run reads (models, datasets), from its listing alone.
"""
