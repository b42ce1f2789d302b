"""The radiologist's day (issue 14): the reading worklist, who reads which study (assignment,
claims, rules), turnaround targets and the overdue worker, and turnaround analytics."""
