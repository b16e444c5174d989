"""What goes into a run before any scoring: model directories, templates, tokens.

Data flow: modelio (what a model directory is: kind, weights, remote code, custom heads, read
without importing it) and demo (the embedded SmolLM2 model) -> format (chat templates and the
named fallbacks: prompt and response -> texts) -> tokenization (texts -> classifier sequences
and DPO pairs, quirks included).
"""
