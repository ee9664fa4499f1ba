"""The token-label-map app's pieces, importable without the app folder.

`images` reads untrusted uploads safely and prepares them for a runner, `catalog` finds
and opens the models, `analysis` turns one image into top-5 and token maps (computed by
`stl_bench.stl.tokenmaps`), `drawing` and `views` turn those into pictures, `outputs`
writes them; only `blocks` imports Gradio (lazily, from the `stl-bench app` command and
`app/app.py`), and it defines no Gradio component class, because Gradio writes a `.pyi`
stub beside the source file of every component class it sees created.
"""
