"""What an explanation is once computed: the explanation classes, their words view, predictions,
and the one record (``record``) every command writes."""
