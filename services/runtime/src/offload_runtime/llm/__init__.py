"""LLM access shared by the `ai` and `research` services.

- `ports`: what domain code depends on (`ChatModel`, the request and chunk
  types, `collect`). No HTTP library is imported there.
- `openai_compatible`: the adapter, an httpx client for any OpenAI-compatible
  chat completions API (OpenAI, vLLM, Ollama, llama.cpp server, the sandbox),
  with its settings (`OFFLOAD_LLM_*`).

It lives in the runtime because two services use it; nothing is re-exported
here so that importing the ports never pulls httpx in.
"""
