from django.apps import AppConfig


class RealtimeConfig(AppConfig):
    name = "realtime"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from .channels import policies

        policies()  # a bad NOTIFIER["NAMESPACES"] stops the process at start, not at a publish
