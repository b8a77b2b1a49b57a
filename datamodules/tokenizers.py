"""Tokenizers of the LM task: bytes (the default, no files) and tiktoken BPE from a local file.

Both expose the same small interface: ``encode(text) -> LongTensor [n]``, ``decode(ids) -> str``,
``vocab_size``, ``bos_id`` (prepended to every document), ``pad_id`` (fills windows past a
document's end; never a label) and ``token_bytes`` (UTF-8 bytes of every id, 0 for specials), from
which bits per byte are exact: the bytes of a token sequence are the sum of its tokens' bytes.

``tiktoken.get_encoding`` downloads its ranks at run time; here the encoding is built from a
``.tiktoken`` file instead (e.g. ``../shared/data/lm/gpt2_tiktoken/gpt2.tiktoken``).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Sequence, Union

import torch

BYTE = "byte"


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255, then ``<bos>`` = 256 and ``<pad>`` = 257 (vocab 258)."""

    name = BYTE
    vocab_size = 258
    bos_id = 256
    pad_id = 257

    def encode(self, text: str) -> torch.Tensor:
        """text -> [n] int64 byte values."""
        data = text.encode("utf-8")
        if not data:  # frombuffer rejects empty buffers
            return torch.zeros(0, dtype=torch.long)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()

    def decode(self, ids: Union[torch.Tensor, Sequence[int]]) -> str:
        """ids -> text; specials are dropped, invalid UTF-8 is replaced."""
        ids = torch.as_tensor(ids).flatten()
        return bytes(ids[ids < 256].to(torch.uint8).tolist()).decode("utf-8", errors="replace")

    @cached_property
    def token_bytes(self) -> torch.Tensor:
        """[vocab] int64: 1 for the 256 byte tokens, 0 for the specials."""
        return (torch.arange(self.vocab_size) < 256).long()


class TiktokenTokenizer:
    """A BPE from a local ``.tiktoken`` ranks file; ``<|endoftext|>`` (id = number of ranks) is the
    BOS and pad token, as in GPT-2.

    Args:
        path: the ``.tiktoken`` file (base64 token, rank per line).
        pat_str: the pre-tokenisation regex; default GPT-2's (``r50k``).
    """

    def __init__(self, path: Union[str, Path], pat_str: str | None = None):
        try:
            import tiktoken
            from tiktoken.load import load_tiktoken_bpe
            from tiktoken_ext.openai_public import r50k_pat_str
        except ImportError as e:  # an optional extra
            raise ImportError("BPE tokenizers need tiktoken: pip install 'lact-app[tiktoken]'") from e
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"tiktoken ranks file {path} not found (tokenizer must be 'byte' or a .tiktoken path)"
            )
        ranks = load_tiktoken_bpe(str(path))
        self.bos_id = self.pad_id = len(ranks)
        self.encoding = tiktoken.Encoding(
            name=path.stem, pat_str=pat_str or r50k_pat_str, mergeable_ranks=ranks,
            special_tokens={"<|endoftext|>": self.bos_id}, explicit_n_vocab=len(ranks) + 1,
        )  # fmt: skip
        self.name = f"tiktoken:{path.stem}:{self.encoding.n_vocab}"
        self.vocab_size = self.encoding.n_vocab

    def encode(self, text: str) -> torch.Tensor:
        """text -> [n] int64 ids (special-token strings in the text are encoded as plain text)."""
        return torch.tensor(self.encoding.encode_ordinary(text), dtype=torch.long)

    def decode(self, ids: Union[torch.Tensor, Sequence[int]]) -> str:
        """ids -> text; the special token is dropped, invalid UTF-8 is replaced."""
        ids = [i for i in torch.as_tensor(ids).flatten().tolist() if i != self.bos_id]
        return self.encoding.decode(ids, errors="replace")

    @cached_property
    def token_bytes(self) -> torch.Tensor:
        """[vocab] int64: bytes of each token, 0 for ``<|endoftext|>``."""
        sizes = [len(self.encoding.decode_single_token_bytes(i)) for i in range(self.bos_id)]
        return torch.tensor(sizes + [0], dtype=torch.long)


Tokenizer = Union[ByteTokenizer, TiktokenTokenizer]


def build_tokenizer(spec: str) -> Tokenizer:
    """``"byte"`` or the path of a ``.tiktoken`` ranks file."""
    if spec == BYTE:
        return ByteTokenizer()
    return TiktokenTokenizer(spec)
