"""rankbench's Python servers: one HTTP core (uvloop + httptools + asyncpg + orjson) and one small
module per model runtime. Run with `python -m py_servers --backend {torch,onnx,none} ...`."""
