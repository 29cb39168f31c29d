"""A minimal OpenAI-shaped embeddings server with sentence-transformers, FastAPI and uvicorn:
the baseline `largo serve` is compared with (tools/bench_serve_compare.sh).

Deployed the way a user would do it minimally:
  * one uvicorn worker process (one copy of the model), serving until SIGTERM / Ctrl-C;
  * a plain (sync) endpoint, so FastAPI runs each request's `model.encode` in its default
    threadpool while the event loop keeps accepting connections;
  * each request encoded as it comes (batch_size 32 within a request), no cross-request
    batching; torch on the CPU with torch.set_num_threads(--threads);
  * no access log (per-request log lines would cost it time that largo does not spend).

Routes: POST /v1/embeddings ({"model", "input": string or list of strings} ->
{"data": [{"embedding": [...]}, ...], "usage": {"prompt_tokens", "total_tokens"}}),
GET /v1/models, GET /health.

    pip install fastapi uvicorn
    python3 tools/serve_st.py --model ../shared/models/all-MiniLM-L6-v2 --threads 2 --port 8000
"""
import argparse
import os
import sys
from typing import List, Optional, Union


def build_app(model_dir, name, threads):
    import torch
    from fastapi import FastAPI, HTTPException
    from pydantic import BaseModel
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(model_dir, device="cpu")
    app = FastAPI()

    class EmbeddingRequest(BaseModel):
        input: Union[str, List[str]]
        model: Optional[str] = None
        encoding_format: Optional[str] = None

    @app.post("/v1/embeddings")
    def embeddings(req: EmbeddingRequest):
        if req.model not in (None, name):
            raise HTTPException(404, f"the model '{req.model}' does not exist; served: {name}")
        texts = [req.input] if isinstance(req.input, str) else req.input
        if not texts:
            raise HTTPException(400, "'input' is an empty list")
        vectors = model.encode(texts, batch_size=32, convert_to_numpy=True)
        # Token counts for `usage`, truncated as encode truncates (special tokens included).
        ids = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]
        tokens = sum(len(i) for i in ids)
        return {
            "object": "list",
            "model": name,
            "data": [
                {"object": "embedding", "index": i, "embedding": v.tolist()}
                for i, v in enumerate(vectors)
            ],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    @app.get("/v1/models")
    def models():
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "owned_by": "sentence-transformers",
                      "capability": "embeddings"}],
        }

    @app.get("/health")
    def health():
        return {"status": "ok"}

    return app


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="../shared/models/all-MiniLM-L6-v2")
    ap.add_argument("--name", default=None, help="model name in the API (default: the directory's name)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args()
    if not os.path.isdir(args.model):
        sys.exit(f"error: no model directory at {args.model}")
    name = args.name or os.path.basename(os.path.normpath(args.model))

    import uvicorn

    app = build_app(args.model, name, args.threads)
    print(f"serving {name} on http://{args.host}:{args.port} (sentence-transformers, 1 worker, "
          f"{args.threads} torch threads)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, workers=1, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
