"""The token-label-map app's pieces, importable without the app folder.

`images` reads untrusted uploads safely and prepares them for a runner, `catalog` finds
and opens the models, `analysis` turns one image into top-5 and token maps; only
`blocks` imports Gradio (lazily, from the `stl-bench app` command and `app/app.py`).
"""
