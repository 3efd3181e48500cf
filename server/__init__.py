"""FastAPI app serving dictionaries and features from the store (``uvicorn server.app:app``)."""
