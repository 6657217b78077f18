"""SINF Studio: entry point (placeholder until the app pages land)."""

import streamlit as st

st.set_page_config(page_title="SINF Studio", layout="wide")
st.title("SINF Studio")
st.write("Semantic Inference: a shared stem, a route predictor, and per-cluster pruned subgraphs.")
