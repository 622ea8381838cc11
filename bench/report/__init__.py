"""The reporting stage: published and measured numbers side by side, per paper table.

``bench report`` (``bench.report.command``) reads result files through ``bench.collect``, builds one
view per table (``frame``), judges each cell against its tolerance and each ablation claim against
its baseline (``rules``: the one place where tolerances and the verdict rule live), and writes HTML
pages (``html``, jinja2 templates under ``templates/``), plots (``plots``) and CSV / Markdown / LaTeX
exports (``export``), all formatting numbers one way (``text``); ``build.write_report`` ties them
together.

Importing this package is cheap: pandas, matplotlib and jinja2 are imported where they are used.
"""
