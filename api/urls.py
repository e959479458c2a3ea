from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from . import views

urlpatterns = [
    path("notify", views.NotifyView.as_view(), name="notify"),
    path("notify/batch", views.NotifyBatchView.as_view(), name="notify-batch"),
    path("channels/<str:channel>/history", views.HistoryView.as_view(), name="channel-history"),
    path("channels/<str:channel>/presence", views.PresenceView.as_view(), name="channel-presence"),
    path("tokens", views.TokenView.as_view(), name="tokens"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
]
