"""A pyfunc model for extractive QA: transformers 5 has no question-answering pipeline, so
MLflow's transformers flavour cannot serve our QA models; this wraps lmforge's own `answer()`.

Input: rows with `question` and `context` (a DataFrame, a dict, or a list of dicts).
Output: one answer string per row ("" when a squad_v2 model finds no answer).
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
        from components.finetuning.question_answering import answer

        if hasattr(model_input, "to_dict"):
            rows = model_input.to_dict("records")
        elif isinstance(model_input, dict):
            rows = [model_input]
        else:
            rows = list(model_input)
        return [answer(self.model, self.tokenizer, row["question"], row["context"]) for row in rows]
