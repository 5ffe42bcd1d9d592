"""Evaluation of a trained model: full-ranking metrics, cross-modal retrieval,
and the batched embedding programs they run on (`embed.Embedder`)."""
