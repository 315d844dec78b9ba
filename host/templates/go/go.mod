module {{name}}

go 1.27
