"""The API's routes: the FastAPI app, files, pools, and the fast path for hot calls."""
