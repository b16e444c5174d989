"""Tests of rmbench_fast/inputs/: model directories, templates, tokenization, the hub, the demo model.

- test_demo: the SmolLM2 demo model conversion
- test_format: conversation formatting: FastChat templates and jinja chat templates
- test_hub: models and datasets by hub id, against a fake hub on loopback
- test_modelio: inspect_model_dir: kind detection and one-line errors
- test_no_architectures: config.json with `"architectures": null`: kind and family from the options
- test_tokenize: tokenization against transformers and reward-bench
"""
