"""llama.cpp (built from the llama-cpp-python sdist) through its C API, timed as llama-bench does:

- pp<N>: one `llama_decode` of N prompt tokens into an empty KV cache (output for the last token
  only), tokens/s = N / seconds;
- decode: after a 128-token prompt, `steps` single-token decodes, tokens/s = steps / seconds —
  the same prompt length and steps as `moekit bench --level model` (its decode case).
Token ids follow MoEKit's bench: prefill t ↦ (7919·t + 13) mod V, prompt t ↦ (31·t + 7) mod V.
"""
import time

import llama_cpp as ll
import numpy as np

_backend_ready = False


@ll.llama_log_callback
def _quiet_log(level, text, user_data):
    """llama.cpp's load and graph messages are not part of the report."""


def system_info() -> str:
    ll.llama_log_set(_quiet_log, None)
    return ll.llama_print_system_info().decode(errors="replace").strip()


class LlamaModel:
    def __init__(self, path: str, threads: int, context: int = 1024, batch: int = 512):
        global _backend_ready
        if not _backend_ready:
            ll.llama_log_set(_quiet_log, None)
            ll.llama_backend_init()
            _backend_ready = True
        model_params = ll.llama_model_default_params()
        model_params.n_gpu_layers = 0
        self.model = ll.llama_model_load_from_file(path.encode(), model_params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        context_params = ll.llama_context_default_params()
        context_params.n_ctx = context
        context_params.n_batch = batch
        context_params.n_ubatch = batch
        context_params.n_threads = threads
        context_params.n_threads_batch = threads
        context_params.no_perf = True
        self.context = ll.llama_init_from_model(self.model, context_params)
        if not self.context:
            raise RuntimeError(f"llama.cpp could not create a context for {path}")
        self.vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(self.model))
        self.memory = ll.llama_get_memory(self.context)

    def close(self):
        ll.llama_free(self.context)
        ll.llama_model_free(self.model)

    def _decode(self, tokens):
        array = (ll.llama_token * len(tokens))(*tokens)
        status = ll.llama_decode(self.context, ll.llama_batch_get_one(array, len(tokens)))
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status}")
        ll.llama_synchronize(self.context)

    def _argmax_last(self):
        logits = ll.llama_get_logits_ith(self.context, -1)
        return int(np.ctypeslib.as_array(logits, shape=(self.vocab,)).argmax())

    def logits(self, tokens) -> np.ndarray:
        """[len(tokens), vocab] logits of one sequence from an empty cache (for checking the GGUF)."""
        ll.llama_memory_clear(self.memory, True)
        batch = ll.llama_batch_init(len(tokens), 0, 1)
        try:
            for index, token in enumerate(tokens):
                batch.token[index] = token
                batch.pos[index] = index
                batch.n_seq_id[index] = 1
                batch.seq_id[index][0] = 0
                batch.logits[index] = 1
            batch.n_tokens = len(tokens)
            status = ll.llama_decode(self.context, batch)
            if status != 0:
                raise RuntimeError(f"llama_decode returned {status}")
            rows = [np.ctypeslib.as_array(ll.llama_get_logits_ith(self.context, i), shape=(self.vocab,)).copy()
                    for i in range(len(tokens))]
            return np.stack(rows)
        finally:
            ll.llama_batch_free(batch)

    def prefill_seconds(self, tokens: int) -> float:
        sequence = [(t * 7919 + 13) % self.vocab for t in range(tokens)]
        ll.llama_memory_clear(self.memory, True)
        start = time.perf_counter()
        self._decode(sequence)
        return time.perf_counter() - start

    def decode_seconds_per_token(self, steps: int, prompt: int = 128) -> float:
        """Greedy decoding like MoEKit's bench: argmax of the last logits feeds the next step."""
        ll.llama_memory_clear(self.memory, True)
        self._decode([(t * 31 + 7) % self.vocab for t in range(prompt)])
        token = ((prompt - 1) * 31 + 7) % self.vocab  # the prompt's last token, fed again as MoEKit's bench does
        elapsed = 0.0
        for _ in range(steps):
            start = time.perf_counter()
            self._decode([token])
            elapsed += time.perf_counter() - start
            token = self._argmax_last()
        return elapsed / steps
