"""FAQ Bot: a customer-service chatbot that answers from a company's own knowledge."""

__version__ = "0.1.0"
