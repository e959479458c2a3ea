from django.urls import path

from . import views

urlpatterns = [
    path("notify", views.NotifyView.as_view(), name="notify"),
    path("notify/batch", views.NotifyBatchView.as_view(), name="notify-batch"),
    path("channels/<str:channel>/history", views.HistoryView.as_view(), name="channel-history"),
]
