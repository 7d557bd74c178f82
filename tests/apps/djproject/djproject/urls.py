from django.urls import path

from djproject import views

urlpatterns = [
    path("env/", views.env),
    path("form/", views.form),
    path("protected/", views.protected),
]
