"""SINF Studio, the Streamlit app (entry point: app/streamlit_app.py)."""
