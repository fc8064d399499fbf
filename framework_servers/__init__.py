"""rankbench servers on FastAPI + uvicorn: the published study's stack (seed_app.py) and the
framework alone (fastapi_app.py), both speaking docs/contract.md. See main.py."""
