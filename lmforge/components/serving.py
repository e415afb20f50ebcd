"""Pyfunc models for extractive QA and seq2seq generation: transformers 5 has neither a question-answering
nor a text2text pipeline, so MLflow's transformers flavour cannot serve these models.

QuestionAnsweringModel wraps lmforge's own `answer()`. Input: rows with `question` and `context` (a
DataFrame, a dict, or a list of dicts). Output: one answer string per row ("" when a squad_v2 model
finds no answer). Seq2SeqGenerationModel: see its docstring.
"""

from __future__ import annotations

import mlflow.pyfunc


class QuestionAnsweringModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from transformers import AutoModelForQuestionAnswering, AutoTokenizer

        folder = context.artifacts["model"]
        self.model = AutoModelForQuestionAnswering.from_pretrained(folder, use_safetensors=True)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)

    def predict(self, context, model_input, params=None) -> list[str]:
        from lmforge.components.finetuning.qa_answers import answer

        if hasattr(model_input, "to_dict"):
            rows = model_input.to_dict("records")
        elif isinstance(model_input, dict):
            rows = [model_input]
        else:
            rows = list(model_input)
        return [answer(self.model, self.tokenizer, row["question"], row["context"]) for row in rows]


class Seq2SeqGenerationModel(mlflow.pyfunc.PythonModel):
    """A seq2seq (BART-style) model writing text from text: transformers 5 has no text2text pipeline.

    Input: texts (a list, a DataFrame's first column, or one string); params: max_new_tokens (default 64).
    Output: one greedy generation per text, special tokens left out.
    """

    def load_context(self, context) -> None:
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        folder = context.artifacts["model"]
        self.model = AutoModelForSeq2SeqLM.from_pretrained(folder, use_safetensors=True).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)

    def predict(self, context, model_input, params=None) -> list[str]:
        import torch

        if hasattr(model_input, "iloc"):
            texts = model_input.iloc[:, 0].tolist()
        elif isinstance(model_input, str):
            texts = [model_input]
        else:
            texts = list(model_input)
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True)
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=int((params or {}).get("max_new_tokens", 64)),
                                      do_sample=False, num_beams=1)
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)
