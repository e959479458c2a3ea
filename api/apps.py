from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "api"
    verbose_name = "Notifier API"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from . import schema  # noqa: F401 - registers the OpenAPI authentication extension
        from .keys import bump_generation
        from .models import ApiKey

        # Every process forgets its cached keys when one changes (api/keys.py).
        post_save.connect(bump_generation, sender=ApiKey, dispatch_uid="api-key-changed")
        post_delete.connect(bump_generation, sender=ApiKey, dispatch_uid="api-key-deleted")
