"""What goes into a run before any scoring: model directories, templates, tokens.

Data flow: modelio (what a model directory is: kind, weights, remote code, custom heads, read
without importing it) and demo (the embedded SmolLM2 model) -> format (chat templates and the
named fallbacks: prompt and response -> texts) -> tokenization (texts -> classifier sequences
and DPO pairs, quirks included).

Model and dataset ids come first: hub (`ORG/NAME[@REVISION]` for models and datasets: a local
directory of that name first, else the Hugging Face hub cache, else a download of only the files a
run reads; each id pinned to one commit per run) with hub_files (which files of a hub repo a run
reads, from its listing alone) and hub_resume (a model's weight files, resumed per byte after a
killed download, into the hub cache's own layout), and datafiles (which files `--data PATH`
means, and their fingerprint, for every benchmark).
"""
